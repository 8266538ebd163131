"""Nothing lost, by class: options checked before the first write, flags read by type, values that cannot work
refused, a one-step run, resume after the final checkpoint, user files kept, OS errors in one sentence, runs
that read the same from any folder, compare's names; and every option of every command fed hostile values."""

import argparse
import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import train_args

import loraboost.compare as compare_module
import loraboost.run as run_module
from loraboost.cli import build_parser, main


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(tiny_model, reviews_csv, tmp_path_factory):
    run = tmp_path_factory.mktemp("lost") / "run"
    assert main(train_args(tiny_model, reviews_csv, run, "--method", "xgblora", "--steps-per-round", "2")) == 0
    return run


@pytest.mark.parametrize(
    "extra",
    [
        ["--lr-scheduler", "bogus"],
        ["--report-to", "bogus"],
        ["--learning-rate", "nan"],
        ["--learning-rate", "inf"],
        ["--epochs", "0", "--max-steps", "-1"],
        ["--warmup-ratio", "-1"],
        ["--warmup-ratio", "5"],
        ["--template", "{message}"],
        ["--template", "no placeholder at all"],
        ["--rank", "100000"],
        ["--max-length", "100000"],
        ["--method", "cola", "--max-steps", "2"],
    ],
    ids=lambda extra: " ".join(extra),
)
def test_a_bad_option_leaves_no_folder_and_no_staging(extra, tiny_model, reviews_csv, finished, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, *extra)) == 2
    lines = error_lines(capsys)
    assert lines[-1].startswith("loraboost train: error: ") and "Traceback" not in "\n".join(lines)
    assert not run.exists()
    # The same option with --overwrite on a finished run: the run unchanged, no hidden staging folder left.
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    before = snapshot(copy)
    assert main([*train_args(tiny_model, reviews_csv, copy, *extra), "--overwrite"]) == 2
    assert snapshot(copy) == before and not (tmp_path / ".copy.overwrite").exists()


def test_flag_values_keep_their_type(tiny_model, reviews_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    template = "Message: {text} Is it good or bad? Answer:"
    extra = ["--template", template, "--label-words", " bad, good", "--max-steps", "1"]
    assert main(train_args(tiny_model, reviews_csv, "2024", *extra)) == 0  # a folder named 2024, not a number
    saved = json.loads((tmp_path / "2024" / "run.json").read_text())["options"]
    assert saved["template"] == template and saved["label_words"] == [" bad", " good"]


def test_a_one_step_run_learns_and_exports(tiny_model, reviews_csv, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, "--method", "lora", "--max-steps", "1")) == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("method", ["xgblora", "full"])
def test_resume_after_the_final_checkpoint_gives_the_same_bytes(method, tiny_model, reviews_csv, tmp_path):
    extra = ["--method", method, *(["--steps-per-round", "2"] if method != "full" else [])]
    done = tmp_path / "done"
    assert main(train_args(tiny_model, reviews_csv, done, *extra)) == 0
    # Killed once the checkpoint of the last step was complete, before the final outputs and summary.json.
    killed = tmp_path / "killed"
    shutil.copytree(done, killed)
    for name in ("summary.json", "booster_state.safetensors"):
        (killed / name).unlink(missing_ok=True)
    for name in ("adapter", "model"):
        shutil.rmtree(killed / name, ignore_errors=True)
    assert main([*train_args(tiny_model, reviews_csv, killed, *extra), "--resume"]) == 0
    summary = json.loads((killed / "summary.json").read_text())
    assert (
        summary["steps"] == 6
        and summary["rounds_merged"] == json.loads((done / "summary.json").read_text())["rounds_merged"]
    )
    output = "adapter/adapter_model.safetensors" if method != "full" else "model/model.safetensors"
    assert (killed / output).read_bytes() == (done / output).read_bytes()


def test_user_files_are_never_deleted_or_overwritten(tiny_model, reviews_csv, finished, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own work")
    assert main([*train_args(tiny_model, reviews_csv, mine), "--overwrite"]) == 2
    message = error_lines(capsys)[-1]
    assert "not a loraboost run" in message and "--overwrite" not in message
    assert (mine / "notes.txt").read_text() == "my own work"
    before = snapshot(finished)
    assert main(["export", str(finished), str(finished), "--overwrite"]) == 2
    assert main(["eval", str(finished), "--metrics-file", str(finished / "summary.json")]) == 2
    assert main(["predict", str(finished), "--data", str(reviews_csv), "--output", str(finished / "run.json")]) == 2
    assert snapshot(finished) == before
    # A run folder that also holds a user's file is not replaced either.
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    (copy / "notes.txt").write_text("mine")
    assert main([*train_args(tiny_model, reviews_csv, copy), "--overwrite"]) == 2
    assert "notes.txt" in error_lines(capsys)[-1] and (copy / "notes.txt").exists()


def test_os_errors_are_one_sentence(tiny_model, reviews_csv, finished, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    assert main(train_args(tiny_model, reviews_csv, tmp_path / "file" / "run")) == 2
    assert "lies under the file" in error_lines(capsys)[-1]
    (tmp_path / "folder.json").mkdir()
    assert main(["eval", str(finished), "--metrics-file", str(tmp_path / "folder.json")]) == 2
    assert "is a folder" in error_lines(capsys)[-1]

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", disk_full)
    assert main(["eval", str(finished), "--metrics-file", str(tmp_path / "m.json")]) == 2
    lines = [line for line in error_lines(capsys) if "error" in line]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in lines[0]


def test_a_run_reads_the_same_from_any_folder(tiny_model, reviews_csv, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    shutil.copy(reviews_csv, work / "reviews.csv")
    monkeypatch.chdir(work)
    assert main(train_args(tiny_model, "reviews.csv", "run", "--method", "lora", "--max-steps", "2")) == 0
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(work / "run"), "--metrics-file", "m.json"]) == 0
    assert main(["export", str(work / "run"), "exported"]) == 0


def test_compare_takes_no_prefix_of_its_options(tiny_model, reviews_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--method", "cola", "--model", str(tiny_model), "--data", str(reviews_csv), "--output", str(out)]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    lines = error_lines(capsys)
    assert stop.value.code == 2 and len(lines) == 1 and "unrecognized arguments: --method cola" in lines[0]
    assert not out.exists()


def test_an_error_is_one_line_with_no_third_party_chatter(tiny_model, reviews_csv, tmp_path):
    command = [sys.executable, "-m", "loraboost.cli", *train_args("no-such-model", reviews_csv, tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "no model hub" in done.stderr


# ------------------------------------------------------------------------------------ the hostile-value guard
class ReachedTraining(BaseException):
    """Raised where training would start: every check before it has passed."""


HOSTILE = ["0", "-1", "nan", "inf", "10000000", "", "abc"]


def options_of(command: str) -> list[argparse.Action]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [
        action
        for action in commands.choices[command]._actions
        if action.option_strings and action.nargs != 0 and "--help" not in action.option_strings
    ]


def hostile_cases():
    for command in ("train", "compare", "eval", "predict", "export"):
        for action in options_of(command):
            for value in [*HOSTILE, "FILE", "FOLDER", "NOTHING"]:
                yield pytest.param(command, action.option_strings[0], value, id=f"{command} {action.dest}={value!r}")


@pytest.mark.parametrize("command, flag, value", list(hostile_cases()))
def test_every_option_refuses_hostile_values_cleanly(
    command, flag, value, tiny_model, reviews_csv, finished, tmp_path, monkeypatch, capsys
):
    (tmp_path / "a-file.txt").write_text("not what any option wants")
    (tmp_path / "a-folder").mkdir()
    value = {"FILE": str(tmp_path / "a-file.txt"), "FOLDER": str(tmp_path / "a-folder")}.get(value, value)
    value = str(tmp_path / "nothing") if value == "NOTHING" else value

    def reached(*args, **kwargs):
        raise ReachedTraining

    monkeypatch.setattr(run_module, "_train_and_finish", reached)
    # compare's runs are train's (checked option by option above); here only compare's own checks run first.
    monkeypatch.setattr(compare_module, "train", reached)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    base = {
        "train": train_args(tiny_model, reviews_csv, out),
        "compare": [*train_args(tiny_model, reviews_csv, out)[1:], "--methods", "lora", "--seeds", "0"],
        "eval": [str(finished), "--metrics-file", str(tmp_path / "m.json")],
        "predict": [str(finished), "--data", str(reviews_csv), "--output", str(tmp_path / "p.csv")],
        "export": [str(finished), str(out)],
    }[command]
    if command == "compare":
        base = [a for a in base if a not in ("--save-steps", "3")]
    argv = [command, *base, flag, value]
    before = {**snapshot(finished), **snapshot(Path(reviews_csv).parent)}
    try:
        code = main(argv)
    except ReachedTraining:
        code = "trains"
    except SystemExit as stop:  # argparse: a value of the wrong type
        code = stop.code
    lines = error_lines(capsys)
    assert code in (0, 2, "trains"), (argv, lines[-3:])
    assert "Traceback" not in "\n".join(lines)
    assert {**snapshot(finished), **snapshot(Path(reviews_csv).parent)} == before
    if code == 2:
        assert len([line for line in lines if "error" in line]) == 1, lines
        if command in ("train", "export"):
            assert not out.exists() or not any(out.iterdir())
