"""Nothing is lost when things go wrong: a table of bad inputs through the CLI (exit 2, one short message naming
the bad value, no traceback, no folder left, a finished run untouched byte for byte), and SIGKILLs at random
points of a run (steps, merges, checkpoint writes, final outputs) after which --resume ends bit-identically."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_llama, train_args
from safetensors.torch import load_file

from loraboost import BoostConfig, Booster
from loraboost.cli import main

HERE = Path(__file__).parent
ROUNDS = ["--method", "xgblora", "--steps-per-round", "2", "--layers-per-round", "1"]


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tiny_model, reviews_csv, tmp_path_factory):
    """A finished rank-1 XGBLoRA run, to aim failing commands at."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(tiny_model, reviews_csv, run, *ROUNDS)) == 0
    return run


@pytest.fixture
def unfinished_run(finished_run, tmp_path):
    """The same run as if killed after its last checkpoint: no final outputs, no summary."""
    run = tmp_path / "unfinished"
    shutil.copytree(finished_run, run)
    for name in ("summary.json", "booster_state.safetensors"):
        (run / name).unlink()
    shutil.rmtree(run / "adapter")
    return run


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def bad_new_run(case: str, tmp: Path, model: Path, data: Path):
    """(argv, the words the message must hold) for a bad input aimed at a new run folder ``tmp/run``."""
    run = tmp / "run"
    args = lambda *extra, data=data, model=model: train_args(model, data, run, *extra)  # noqa: E731
    labels = "".join(f"film {i},{'good' if i % 2 else 'bad'}\n" for i in range(60))
    cases = {
        "missing file": (args(data=tmp / "nope.csv"), "does not exist"),
        "missing column": (args("--text-column", "review"), "text_column='review' is not a column"),
        "single class": (args(data=write(tmp / "one.csv", "text,label\n" + "film,good\n" * 60)), "has a single class"),
        "empty split": (args("--test-size", "0"), "test_size=0 is not valid"),
        "split too large": (args("--train-size", "1000"), "need 1016 examples but the data set has 80"),
        "not utf-8": (
            args(data=write(tmp / "latin1.csv", "text,label\ncaf\xe9,good\n".encode("latin-1"))),
            "not UTF-8",
        ),
        "hub model": (args(model="HuggingFaceTB/SmolLM2-1.7B"), "no model hub is reachable offline"),
        "bad method": (args("--method", "boost"), "method='boost'"),
        "empty csv": (args(data=write(tmp / "empty.csv", "")), "is empty (0 bytes)"),
        "header-only csv": (args(data=write(tmp / "header.csv", "text,label\n")), "has no rows"),
        "empty text labels": (
            args(data=write(tmp / "gaps.csv", "text,label\n" + labels + "film x,\n")),
            "label_column='label' is empty in 1 row",
        ),
        "empty numeric labels": (
            args(
                data=write(
                    tmp / "gaps-numeric.csv",
                    "text,label\n" + labels.replace("good", "1").replace("bad", "0") + "film x,\n",
                )
            ),
            "is empty in 1 row",
        ),
        "malformed jsonl": (
            args(data=write(tmp / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label\n')),
            "line 2 is not valid JSON",
        ),
        "output is a file": (train_args(model, data, write(tmp / "file.txt", "x")), "is a file, not a folder"),
        "output not writable": (train_args(model, data, "/proc/loraboost-run"), "cannot write into '/proc'"),
        "yaml list": (args("--config", str(write(tmp / "list.yaml", "- a\n- b\n"))), "holds a YAML list"),
        "yaml scalar": (args("--config", str(write(tmp / "scalar.yaml", "3\n"))), "holds a YAML int"),
        "yaml syntax": (args("--config", str(write(tmp / "syntax.yaml", "rank: [1,\n"))), "is not valid YAML"),
        "empty model folder": (args(model=tmp / "empty-model"), "has no config.json"),
        "duplicate label words": (args("--label-words", " good, good"), "label words ' good' and ' good'"),
        "negative max steps": (args("--max-steps", "-5"), "max_steps=-5 is not valid"),
        "zero max steps": (args("--max-steps", "0"), "max_steps=0 is not valid"),
        "no matching targets": (args("--target-modules", "nomatch_proj"), "target_modules='nomatch_proj' matches no"),
        "too many layers": (args("--layers-per-round", "100"), "layers_per_round=100"),
        "resume nothing": (args("--resume"), "--resume needs a run"),
    }
    (tmp / "empty-model").mkdir(exist_ok=True)
    return cases[case]


NEW_RUN_CASES = [
    "missing file",
    "missing column",
    "single class",
    "empty split",
    "split too large",
    "not utf-8",
    "hub model",
    "bad method",
    "empty csv",
    "header-only csv",
    "empty text labels",
    "empty numeric labels",
    "malformed jsonl",
    "output is a file",
    "output not writable",
    "yaml list",
    "yaml scalar",
    "yaml syntax",
    "empty model folder",
    "duplicate label words",
    "negative max steps",
    "zero max steps",
    "no matching targets",
    "too many layers",
    "resume nothing",
]


def assert_one_sentence_error(code: int, err: str, words: str, command: str = "train") -> None:
    lines = [line for line in err.split("\n") if line.strip()]  # terminal lines: a progress bar redraws with \r
    errors = [line for line in lines if line.startswith(f"loraboost {command}: error: ")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) <= 3, err
    assert len(errors) == 1 and words in errors[0], err
    assert errors[0].endswith(".") and errors[0].count(". ") == 0, errors[0]  # one sentence


@pytest.mark.parametrize("case", NEW_RUN_CASES)
def test_bad_input_for_a_new_run_exits_2_and_leaves_no_folder(case, tiny_model, reviews_csv, tmp_path, capsys):
    argv, words = bad_new_run(case, tmp_path, tiny_model, reviews_csv)
    code = main(argv)
    assert_one_sentence_error(code, capsys.readouterr().err, words)
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run*"))  # no staging folder either


def aimed_at_run(case: str, run: Path, model: Path, data: Path, tmp: Path):
    """(argv, command, words) of a failing command aimed at the existing run folder ``run``."""
    train = lambda *extra: train_args(model, data, run, *ROUNDS, *extra)  # noqa: E731
    cases = {
        "resume with another rank": (train("--rank", "4", "--resume"), "train", "rank=4"),
        "resume with other targets": (train("--target-modules", "nomatch_proj", "--resume"), "train", "nomatch_proj"),
        "overwrite with no matching targets": (
            train("--target-modules", "nomatch_proj", "--overwrite"),
            "train",
            "nomatch_proj",
        ),
        "overwrite with too many layers": (
            train("--layers-per-round", "100", "--overwrite"),
            "train",
            "layers_per_round=100",
        ),
        "overwrite with zero steps": (train("--max-steps", "0", "--overwrite"), "train", "max_steps=0"),
        "overwrite with a missing data file": (
            train_args(model, tmp / "nope.csv", run, "--overwrite"),
            "train",
            "does not exist",
        ),
        "train again without a flag": (train(), "train", "already holds a run"),
        "export into the run": (["export", str(run), str(run)], "export", "whose files only train writes"),
        "export onto a file": (["export", str(run), str(write(tmp / "file.txt", "x"))], "export", "is a file"),
        "export with rank to merged": (
            ["export", str(run), str(tmp / "m"), "--to", "merged", "--rank", "2"],
            "export",
            "--rank applies",
        ),
    }
    return cases[case]


TRAIN_AT_RUN = [
    "resume with another rank",
    "resume with other targets",
    "overwrite with no matching targets",
    "overwrite with too many layers",
    "overwrite with zero steps",
    "overwrite with a missing data file",
    "train again without a flag",
]
EXPORT_AT_RUN = ["export into the run", "export onto a file", "export with rank to merged"]  # finished runs only


@pytest.mark.parametrize(
    "case, state",
    [(c, s) for c in TRAIN_AT_RUN for s in ("finished", "unfinished")] + [(c, "finished") for c in EXPORT_AT_RUN],
)
def test_a_failing_command_leaves_an_existing_run_byte_identical(
    case, state, finished_run, unfinished_run, tiny_model, reviews_csv, tmp_path, capsys
):
    run = finished_run if state == "finished" else unfinished_run
    argv, command, words = aimed_at_run(case, run, tiny_model, reviews_csv, tmp_path)
    if state == "finished" and case.startswith("resume"):
        words = "is finished, so there is nothing to resume"
    before = checksums(run)
    code = main(argv)
    assert_one_sentence_error(code, capsys.readouterr().err, words, command)
    assert checksums(run) == before
    assert not list(run.parent.glob(f".{run.name}.*"))  # no staging folder left beside it


def test_the_finished_run_still_evaluates_and_exports_after_the_failures(finished_run, tmp_path):
    assert main(["export", str(finished_run), str(tmp_path / "adapter")]) == 0
    assert main(["eval", str(finished_run), "--metrics-file", str(tmp_path / "eval.json")]) == 0


def test_eval_names_what_it_reads_and_refuses_a_truncated_adapter(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert main(["eval", str(run)]) == 0
    assert f"scoring {run} from {run / 'booster_state.safetensors'}" in capsys.readouterr().err
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code = main(["eval", str(run)])
    assert_one_sentence_error(code, capsys.readouterr().err, "is corrupt or truncated", "eval")
    assert main(["export", str(run), str(run / "adapter"), "--overwrite"]) == 0  # the fix the message gives
    assert main(["eval", str(run)]) == 0


def test_overwrite_keeps_the_old_run_until_the_new_one_is_finished(
    finished_run, tiny_model, reviews_csv, tmp_path, monkeypatch, capsys
):
    import loraboost.run as run_module

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = checksums(run)

    class CtrlCAtStep2(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    original = run_module.TaskTrainer.__init__
    monkeypatch.setattr(
        run_module.TaskTrainer,
        "__init__",
        lambda self, *a, callbacks, **k: original(self, *a, callbacks=[*callbacks, CtrlCAtStep2()], **k),
    )
    argv = train_args(tiny_model, reviews_csv, run, "--method", "cola", "--rounds", "3", "--overwrite")
    assert main(argv) == 130
    assert "the old run in" in capsys.readouterr().err
    assert checksums(run) == before  # interrupted: the old run is untouched
    monkeypatch.setattr(run_module.TaskTrainer, "__init__", original)
    assert main([*argv, "--resume"]) == 0  # the new run continues beside it, then replaces it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "cola" and summary["steps"] == 6
    assert not list(tmp_path.glob(".run*"))


def test_a_failed_booster_leaves_the_model_unwrapped():
    model = tiny_llama(layers=3)
    with pytest.raises(ValueError, match="layers_per_round=100"):
        Booster(model, BoostConfig(layers_per_round=100))
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    booster = Booster(model, BoostConfig(layers_per_round=1))  # a retry with a good config works
    assert len(booster.slots) == 3 * 7


def test_outputs_follow_the_umask_and_metrics_name_each_steps_own_round(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for path in (finished_run / "adapter", finished_run / "summary.json", finished_run / "run.json"):
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == expected, path
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    rounds = {row["step"]: row["round"] for row in rows if "loss" in row}
    assert rounds == {1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2}  # 2 steps per round; step 2 ends round 0


def run_killed(where: str, n: int, argv: list[str]) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, str(HERE / "kill_worker.py"), where, str(n), "--", *argv],
        env=env,
        capture_output=True,
        text=True,
    ).returncode


def test_sigkill_anywhere_then_resume_ends_bit_identical(tiny_model, reviews_csv, tmp_path):
    """One run killed again and again at random points (seeded), each time resumed, against one never killed."""

    def argv(run):
        return train_args(tiny_model, reviews_csv, run, *ROUNDS, "--max-steps", "8", "--save-steps", "2")

    assert main(argv(tmp_path / "straight")) == 0
    rng = random.Random(7)
    kills = [
        ("step", rng.randint(2, 4)),
        ("merge", 1),
        ("checkpoint", rng.randint(1, 2)),
        ("state", 1),
        ("step", rng.randint(1, 2)),
        ("final", 1),
    ]
    run = tmp_path / "killed"
    for i, (where, n) in enumerate(kills):
        code = run_killed(where, n, argv(run) + (["--resume"] if i else []))
        assert code == -signal.SIGKILL, (where, n, code)
        assert not (run / "summary.json").exists()
    assert main([*argv(run), "--resume"]) == 0
    straight, killed = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (tmp_path / "straight", run))
    assert straight.keys() == killed.keys()
    assert all(torch.equal(straight[k], killed[k]) for k in straight)
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["steps"] == 8
        and summary["rounds_merged"]
        == json.loads((tmp_path / "straight" / "summary.json").read_text())["rounds_merged"]
    )
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == list(range(1, 9))  # every step logged once, none repeated by a resume
