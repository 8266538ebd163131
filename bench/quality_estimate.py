"""What a quality plan took when it ran here: the train times recorded in its run folders, summed per cell."""

from __future__ import annotations

from pathlib import Path

from sweep import timed_as

from loraboost.run_folder import FINISHED


def recorded_seconds(folder: Path) -> float | None:
    """A finished run's share of the machine: from its start (run.json, written once the model is loaded)
    to its summary, divided by the runs that trained beside it; None where no finished run is there."""
    start, end = folder / "run.json", folder / FINISHED
    if not (start.exists() and end.exists()):
        return None
    first_word = timed_as(folder).split()[0]  # "2 runs side by side, ..." or "one run at a time, ..."
    side_by_side = int(first_word) if first_word.isdigit() else 1
    return (end.stat().st_mtime - start.stat().st_mtime) / side_by_side


def estimate(out: Path, cells: list[tuple[str, str, str]], seeds: list[int]) -> str:
    """What training the (model, task, name) cells costs, summed from the finished runs in ``out``: every
    rate that the LR search tried on the first seed, and the picked rate on the others."""
    lines, total, missing = [], 0.0, []
    for model, task, name in cells:
        folders = [
            f
            for f in sorted((out / f"{model}-{task}" / name).glob("lr*-seed*"))
            if int(f.name.rsplit("seed", 1)[1]) in seeds
        ]
        seconds = [s for s in map(recorded_seconds, folders) if s is not None]
        if not seconds:
            missing.append(f"{model}-{task}/{name}")
            continue
        total += sum(seconds)
        lines.append(f"  {model}-{task}/{name}: {len(seconds)} runs, {sum(seconds) / 60:.0f} min")
    lines.append(
        f"estimate: {total / 3600:.1f} h of machine time for the {len(cells) - len(missing)} cells "
        f"recorded in {out} (model loading and the untrained base's evaluation not counted)"
    )
    if missing:
        lines.append(f"no finished runs to go by for: {', '.join(missing)}")
    return "\n".join(lines)
