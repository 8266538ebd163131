"""Capacity screen: is there a cell where full fine-tuning clearly beats LoRA r8 q/v at the same steps?

Issue 18 asks for a benchmark cell where LoRA's rank binds before running the whole method grid on it. This
trains full fine-tuning and LoRA r8 q/v once each (seed 0, fixed learning rates, one side-by-side pair per
candidate) and prints validation and test scores, so a candidate is kept only if the gap is worth a grid.
The learning rates are not searched: a screen, not a result (the grid of bench/quality.py picks them).

    python bench/capacity_screen.py --candidates trec-fine,cities-state   # MiniLM, minutes each
    python bench/capacity_screen.py --candidates movie-dialog             # SmolLM2 SFT, about 25 min on 2 cores

Each run is a normal loraboost run folder under --output (finished runs are reused); screen.json holds every
run's settings and scores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import sys
from pathlib import Path

import torch

from loraboost.arms import ARMS
from loraboost.assets import DATA_PACKAGE, DATA_PIN, package_dir
from loraboost.options import RunOptions
from loraboost.run import train
from loraboost.run_folder import FINISHED

CITIES = "cities_us.csv.gz"  # GeoNames' US places, in the same data package as the embedded sets


def cities_csv(out: Path) -> str:
    """US place names and their state (51 classes), written as a CSV for the run: can a model learn which
    state a name belongs to (Spanish names in the south-west, Dutch ones in New York, ...)?"""
    path = out / "cities-state.csv"
    if not path.exists():
        import pandas  # a datasets dependency; its CSV reader takes the file's very long alternate-name fields

        source = package_dir(DATA_PACKAGE, DATA_PIN) / "data" / CITIES
        places = pandas.read_csv(source)[["asciiname", "state_abbreviation"]].dropna()
        out.mkdir(parents=True, exist_ok=True)
        places.rename(columns={"asciiname": "text", "state_abbreviation": "label"}).to_csv(path, index=False)
    return str(path)


# name -> (run options shared by both arms, full fine-tuning's LR, LoRA r8 q/v's LR)
CANDIDATES = {
    # TREC's 50 fine classes, the whole train file: 741 steps.
    "trec-fine": (
        dict(model="minilm", data="trec-fine", train_size=3952, validation_size=500, test_size=1000, epochs=3.0),
        3e-4,
        3e-3,
    ),
    "cities-state": (
        dict(model="minilm", data="cities-state", train_size=4000, validation_size=500, test_size=1000, epochs=3.0),
        1e-4,
        3e-3,
    ),
    # Prompt -> reply SFT on SmolLM2, held-out loss (lower is better); 150 steps of 16 pairs.
    "movie-dialog": (
        dict(
            model="default",
            data="movie-dialog",
            task="sft",
            train_size=9600,
            validation_size=200,
            test_size=200,
            max_steps=150,
            max_length=64,
            eval_steps=50,
        ),
        1e-4,
        1e-3,
    ),
}


def run_arm(folder: Path, settings: dict, arm: str, lr: float) -> dict:
    """One arm (full fine-tuning or LoRA r8 q/v) with one torch thread, beside the other arm."""
    torch.set_num_threads(1)
    if (folder / FINISHED).exists():
        return json.loads((folder / FINISHED).read_text())
    options = RunOptions(**settings, learning_rate=lr, output=str(folder), overwrite=True, save_steps=100000)
    print(f"capacity screen: {folder}", file=sys.stderr, flush=True)
    return train(options, ARMS[arm])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--candidates", default="trec-fine,cities-state", help=f"comma-separated: {', '.join(CANDIDATES)}"
    )
    parser.add_argument("--output", default="runs/capacity-screen")
    args = parser.parse_args()
    out = Path(args.output)
    names = args.candidates.split(",")
    for name in names:
        if name not in CANDIDATES:
            parser.error(f"candidate {name!r} is unknown; use one of {', '.join(CANDIDATES)}.")
    report = json.loads((out / "screen.json").read_text()) if (out / "screen.json").exists() else {}
    context = multiprocessing.get_context("spawn")  # a fork of a process that ran OpenMP kernels can hang
    for name in names:
        settings, full_lr, lora_lr = CANDIDATES[name]
        settings = dict(settings)
        if settings["data"] == "cities-state":
            settings["data"] = cities_csv(out)
        arms = {"full": full_lr, "lora-qv": lora_lr}
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            futures = {
                arm: pool.submit(run_arm, out / name / f"{arm}-lr{lr:g}", settings, arm, lr) for arm, lr in arms.items()
            }
            summaries = {arm: future.result() for arm, future in futures.items()}
        report[name] = {
            "settings": settings,
            **{
                arm: {"learning_rate": arms[arm][1], "steps": s["steps"], "metrics": s["metrics"]}
                for arm, s in summaries.items()
            },
        }
        (out / "screen.json").write_text(json.dumps(report, indent=1))
        for arm, s in summaries.items():
            scores = {split: {k: round(v, 4) for k, v in m.items()} for split, m in s["metrics"].items()}
            print(f"{name} {arm} (LR {arms[arm][1]:g}, {s['steps']} steps): {scores}")
    print(f"capacity screen: {out / 'screen.json'}")


if __name__ == "__main__":
    main()
