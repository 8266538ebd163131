"""Task kinds as one protocol: packing raw text for the lm task, its loss against a hand-computed cross-entropy,
the assistant-only mask of a conversation token by token, predict for every kind, and their bad inputs."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_llama, train_args

from loraboost.cli import main
from loraboost.options import RunOptions
from loraboost.packing import pack
from loraboost.task_kinds import TASK_KINDS
from loraboost.task_lm import LmTask
from loraboost.task_sft import SftTask

SOURCE = Path(__file__).parents[1] / "src" / "loraboost"


def test_documents_are_joined_by_eos_and_cut_into_blocks():
    assert list(pack([[1, 2, 3], [4, 5]], eos=0, block_size=3)) == [[1, 2, 3], [0, 4, 5], [0]]
    assert list(pack([[7] * 5], eos=0, block_size=2)) == [[7, 7], [7, 7], [7, 0]]


def test_a_split_packs_only_its_own_documents(tiny_model):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    task = LmTask(RunOptions(task="lm", block_size=8), tokenizer)
    from datasets import Dataset

    train = Dataset.from_dict({"text": ["def f(x):\n    return x", "import os"]})
    test = Dataset.from_dict({"text": ["class A:\n    pass"]})
    blocks = {name: task.prepare(split)["input_ids"] for name, split in (("train", train), ("test", test))}
    eos = tokenizer.eos_token_id
    for name, split in (("train", train), ("test", test)):
        joined = [t for text in split["text"] for t in [*tokenizer(text, add_special_tokens=False).input_ids, eos]]
        assert [t for block in blocks[name] for t in block] == joined  # nothing of the other split's documents
        assert all(len(block) == 8 for block in blocks[name][:-1])


def test_the_lm_loss_is_the_cross_entropy_of_each_next_token():
    model = tiny_llama().eval()
    block = torch.randint(0, 64, (12,), generator=torch.Generator().manual_seed(3)).tolist()
    tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    task = LmTask(RunOptions(task="lm", block_size=12), tokenizer)
    from datasets import Dataset

    metrics = task.evaluate(model, Dataset.from_dict({"input_ids": [block]}), progress=False)
    with torch.no_grad():
        logits = model(torch.tensor([block])).logits[0]
    by_hand = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(block[1:])).item()
    assert metrics["loss"] == pytest.approx(by_hand, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(torch.tensor(by_hand).exp().item(), rel=1e-6)


def test_only_the_assistant_turns_carry_loss_token_by_token(tiny_model):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    task = SftTask(RunOptions(task="sft", messages_column="messages", max_length=256), tokenizer)
    turns = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6."},
    ]
    ids, labels = task.conversation_tokens(turns, row=1)
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    assert ids == tokenizer(full, add_special_tokens=False).input_ids
    # Each assistant turn: its tokens after the generation prompt, up to and including its end-of-turn.
    expected = [-100] * len(ids)
    for k in (1, 3):
        before = tokenizer(
            tokenizer.apply_chat_template(turns[:k], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        ).input_ids
        after = tokenizer(tokenizer.apply_chat_template(turns[: k + 1], tokenize=False), add_special_tokens=False)
        for position in range(len(before), len(after.input_ids)):
            expected[position] = ids[position]
    assert labels == expected
    learned = [tokenizer.decode([t]) for t, y in zip(ids, labels) if y != -100]
    assert "".join(learned) == "It is 4.<|im_end|>\n6.<|im_end|>\n"


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    for i in range(12):
        folder = root / "pkg" / f"sub{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"mod{i}.py").write_text(f"def function_{i}(x):\n    return x * {i} + {i * i}\n" * 6)
    (root / "README.md").write_text("not python")
    return root


def lm_args(tiny_model, data, out, *extra):
    return [
        "train", "--task", "lm", "--model", str(tiny_model), "--data", str(data), "--output", str(out),
        "--train-size", "8", "--test-size", "4", "--block-size", "32", "--batch-size", "4", "--max-steps", "5",
        "--save-steps", "5", "--learning-rate", "0.01", *extra,
    ]  # fmt: skip


def test_continued_pretraining_on_a_glob_trains_scores_and_continues_text(tiny_model, code_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(lm_args(tiny_model, f"{code_dir}/**/*.py", run, "--method", "lora")) == 0
    summary = json.loads((run / "summary.json").read_text())
    test = summary["metrics"]["test"]
    assert summary["steps"] == 5 and test["perplexity"] == pytest.approx(2.718281828 ** test["loss"])
    assert summary["scoring_cost"]["test_tokens"] > 0
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("text\ndef function_(x):\n")
    assert main(["predict", str(run), "--data", str(prompts), "--output", str(tmp_path / "p.csv")]) == 0
    (row,) = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert set(row) == {"text", "generated"}


def test_the_embedded_python_code_corpus_is_the_torch_sources():
    from loraboost.data import EMBEDDED

    corpus = EMBEDDED["python-code"].load()
    assert len(corpus) > 2000 and all(path.startswith("torch/") for path in corpus["path"][:50])
    dialog = EMBEDDED["movie-dialog"].text()
    assert dialog.column_names == ["text"] and len(dialog) > 60000


def test_sft_on_conversations_with_the_chat_template(tiny_model, tmp_path):
    chat = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
        for w in ("hello", "goodbye", "yes", "no") * 12
    ]
    chat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    args = train_args(tiny_model, chat, run, "--task", "sft", "--messages-column", "messages", "--method", "lora")
    assert main(args) == 0
    metrics = json.loads((run / "summary.json").read_text())["metrics"]["test"]
    assert metrics["loss"] > 0 and metrics["perplexity"] > 1
    assert main(["predict", str(run), "--data", str(chat), "--output", str(tmp_path / "p.csv")]) == 0
    assert "generated" in next(csv.DictReader((tmp_path / "p.csv").open()))


@pytest.mark.parametrize(
    "case, words",
    [
        ("glob matches nothing", "matches no file"),
        ("not text", "is not UTF-8 text"),
        ("block size past the context", "block_size=1024 is longer than this model's context of 256 tokens"),
        ("messages not turns", "has a turn that is not {role: text, content: text}"),
        ("no assistant turn", "has no assistant turn"),
        ("no chat template", "tokenizer has none"),
        ("messages without sft", "applies to --task sft"),
    ],
)
def test_bad_task_input_is_one_sentence_and_no_folder(case, words, tiny_model, code_dir, tmp_path, capsys):
    run, model = tmp_path / "run", tiny_model
    chat = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    chat_args = ["--task", "sft", "--messages-column", "messages"]
    if case == "glob matches nothing":
        args = lm_args(model, f"{code_dir}/**/*.rs", run)
    elif case == "not text":
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "blob.py").write_bytes(b"\x00\xff\xfe" * 50)
        args = lm_args(model, tmp_path / "bin", run)
    elif case == "block size past the context":
        args = [*lm_args(model, f"{code_dir}/**/*.py", run), "--block-size", "1024"]
    else:
        conversation = {"messages not turns": ["hi", "hello"], "no assistant turn": turns[:1]}.get(case, turns)
        chat.write_text("".join(json.dumps({"messages": conversation}) + "\n" for _ in range(60)))
        if case == "no chat template":
            model = tmp_path / "model"
            shutil.copytree(tiny_model, model)
            (model / "chat_template.jinja").unlink(missing_ok=True)
            config = json.loads((model / "tokenizer_config.json").read_text())
            config.pop("chat_template", None)
            (model / "tokenizer_config.json").write_text(json.dumps(config))
        extra = chat_args if case != "messages without sft" else ["--messages-column", "messages"]
        args = train_args(model, chat, run, *extra)
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0], errors
    assert not run.exists()


def test_run_cli_and_compare_never_switch_on_a_task_name():
    names = "|".join(TASK_KINDS)
    for module in ("run.py", "cli.py", "compare.py"):
        text = (SOURCE / module).read_text()
        assert not re.search(rf"""==\s*["']({names})["']|["']({names})["']\s*==""", text), module
        assert not re.search(r"options\.task\s*(==|!=|in)", text), module
