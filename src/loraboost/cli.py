"""The command line: `loraboost train | compare | eval | export | demo`. Options come from the RunOptions and
BoostConfig dataclasses (one source of truth); any of them can also be set in a YAML file (--config)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import PRESETS, BoostConfig
from .export import check_adapter_file
from .options import RunOptions
from .run import load_run, prepare, train
from .run_folder import STATE

USAGE_ERROR = 2
HELP = {
    "model": "'default' (the embedded SmolLM2-135M-Instruct), 'minilm' (the embedded all-MiniLM-L6-v2) "
    "or a local model folder",
    "data": "'default' (= 'movie-reviews', sentiment), 'trec' (question type, 6 classes), 'trec-fine' (50 classes; "
    "an encoder such as minilm), a .csv/.tsv/.jsonl/.json/.parquet file, or a hub data set name",
    "eval_steps": "score the validation split every N steps into metrics.jsonl (the learning curve); "
    "0: only at the end",
    "full_finetune": "train every weight of the model instead of boosters (a baseline; saves RUN/model)",
    "task": "classify (label words) or sft (prompt -> response)",
    "template": "prompt template with {text} (classify) or {prompt} (sft)",
    "label_words": "one word per class, comma-separated, in the order of the sorted labels",
    "max_steps": "optimizer steps; -1 to train for --epochs instead",
    "output": "run folder (config, metrics.jsonl, checkpoints, adapter/, summary.json)",
    "method": f"boosting method: {', '.join(PRESETS)}",
    "target_modules": "'all-linear', comma-separated module names, or a regular expression",
    "layers_per_round": "blocks per round: a count, a fraction in (0, 1], or none for all",
}


def parse_value(text: str) -> Any:
    """A CLI value as YAML would read it (numbers, true/false, none), with commas making a list."""
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part]
    if text.lower() in ("none", "null"):
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 (no dot) as a string
            return float(text)
        except ValueError:
            return text
    return value if isinstance(value, (int, float, bool)) else text


def _add_dataclass_options(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, action="store_true", default=None, help=HELP.get(f.name))
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            shown = "" if repr(default).startswith("<") else f" (default: {default})"
            group.add_argument(
                flag,
                type=parse_value,
                default=None,
                metavar="VALUE",
                help=(HELP.get(f.name) or f.name.replace("_", " ")) + shown,
            )


def _resolve(args: argparse.Namespace) -> tuple[RunOptions, dict[str, Any]]:
    """YAML first, then the flags given on the command line: the run options and the BoostConfig values."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_config(args.config))
    skip = ("command", "config", "methods", "seeds", "no_base", "run", "metrics_file")
    values.update({k: v for k, v in vars(args).items() if v is not None and k not in skip})
    run_names = {f.name for f in dataclasses.fields(RunOptions)}
    boost_names = {f.name for f in dataclasses.fields(BoostConfig)}
    unknown = sorted(set(values) - run_names - boost_names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {args.config}; see loraboost train --help.")
    for key in ("label_words", "report_to"):  # lists, even when one item was given
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    options = RunOptions(**{k: v for k, v in values.items() if k in run_names})
    boost = {k: v for k, v in values.items() if k in boost_names}
    boost["seed"] = options.seed
    return options, boost


def read_config(name: str) -> dict[str, Any]:
    """A YAML file of options: a mapping of option names to values (an empty file is no options)."""
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"config file {name!r} does not exist.")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ValueError(
            f"config file {name!r} is not valid YAML ({problem}{where}); write one 'option: value' per line."
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {name!r} is not UTF-8 text; save it as UTF-8.") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(
            f"config file {name!r} holds a YAML {type(content).__name__}, not a mapping of options; "
            "write one 'option: value' per line."
        )
    return content


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraboost",
        description="Fine-tune by boosting low-rank adapters (XGBLoRA, COLA, RAC-LoRA, ReLoRA, LoRA).",
        epilog="Example: loraboost train --method xgblora --data reviews.csv --label-words ' bad, good' "
        "--output runs/xgb   (then: loraboost eval runs/xgb; loraboost export runs/xgb --to merged out/)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "train",
        help="fine-tune a model into a run folder",
        description="Fine-tune with transformers' Trainer and BoostCallback into a run folder.",
    )
    p.add_argument("--config", help="a YAML file of options (the flags below override it)")
    _add_dataclass_options(p, RunOptions, "run")
    # One --seed drives both the data (splits, order) and the booster's plan and initialisations.
    _add_dataclass_options(
        p, BoostConfig, "boosting (see BoostConfig; unset fields take the method's preset)", skip=("seed",)
    )

    p = commands.add_parser(
        "compare",
        help="several methods x seeds on the same data and budget",
        description="Train several methods with several seeds on the same data and step budget; "
        "write a table and a figure (compare.md, compare.png) into --output.",
    )
    p.add_argument("--config", help="a YAML file of options (the flags below override it)")
    p.add_argument("--methods", type=parse_value, default="lora,cola,xgblora", help="comma-separated presets")
    p.add_argument("--seeds", type=parse_value, default="0,1,2", help="comma-separated seeds")
    p.add_argument("--no-base", action="store_true", help="skip the untuned model's row")
    _add_dataclass_options(p, RunOptions, "run (shared by every method)", skip=("seed", "overwrite", "resume"))
    _add_dataclass_options(p, BoostConfig, "boosting overrides (applied to every method)", skip=("seed", "method"))

    p = commands.add_parser(
        "eval",
        help="score a finished run, or a base model, on the test split",
        description="Score a finished run (its test split), or a base model before fine-tuning "
        "(given with --model, --data and the task options).",
    )
    p.add_argument("run", nargs="?", help="a run folder written by loraboost train; omit to score --model")
    p.add_argument("--metrics-file", help="where to save the metrics (default: RUN/eval.json, else eval.json)")
    p.add_argument("--config", help="a YAML file of options for a base model")
    _add_dataclass_options(
        p,
        RunOptions,
        "base model (when no run is given)",
        skip=(
            "overwrite",
            "resume",
            "report_to",
            "output",
            "max_steps",
            "epochs",
            "batch_size",
            "gradient_accumulation",
            "learning_rate",
            "lr_scheduler",
            "warmup_ratio",
            "save_steps",
            "eval_steps",
        ),
    )

    p = commands.add_parser("export", help="export a finished run", description="Export a finished run.")
    p.add_argument("run", help="a run folder written by loraboost train")
    p.add_argument("output", help="the folder to write")
    p.add_argument(
        "--to",
        choices=["adapter", "merged"],
        default="adapter",
        help="a PEFT LoRA adapter (default) or a merged transformers model",
    )
    p.add_argument("--rank", type=int, help="compress the adapter to this rank by SVD (exact when omitted)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    p = commands.add_parser(
        "demo", help="LoRA, COLA and XGBLoRA on the embedded default (what make demo runs)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        from .demo import main as demo

        return demo(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            options, boost = _resolve(args)
            summary = train(options, BoostConfig(**boost))
            print(json.dumps(summary, indent=1))
            saved = "fine-tuned model in {}/model" if options.full_finetune else "adapter in {}/adapter"
            print(f"run folder: {options.output} ({saved.format(options.output)})")
        elif args.command == "compare":
            from .compare import compare

            methods = args.methods if isinstance(args.methods, list) else [args.methods]
            seeds = args.seeds if isinstance(args.seeds, list) else [args.seeds]
            options, boost = _resolve(args)
            configs = {m: BoostConfig(**{**boost, "method": m}) for m in methods}  # validates every method
            compare(options, configs, [int(s) for s in seeds], options.output, include_base=not args.no_base)
        elif args.command == "eval":
            if args.run:
                run = Path(args.run)
                # Scored from the booster state; the adapter beside it is what users take away, so it is checked too.
                if (run / "adapter").is_dir():
                    try:
                        check_adapter_file(run / "adapter")
                    except ValueError as problem:
                        raise ValueError(
                            f"{problem}; rebuild it from the booster state with: loraboost export {run} "
                            f"{run / 'adapter'} --overwrite."
                        ) from None
                finished = load_run(run)
                booster, task, splits = finished.booster, finished.task, finished.splits
                print(f"loraboost eval: scoring {run} from {run / STATE}", file=sys.stderr)
                model, target = booster.model, Path(args.metrics_file or run / "eval.json")
            else:
                options, boost = _resolve(args)
                model, _, task, splits = prepare(options, BoostConfig(**boost))
                target = Path(args.metrics_file or "eval.json")
            metrics = {name: task.evaluate(model, split) for name, split in splits.items() if name != "train"}
            target.write_text(json.dumps(metrics, indent=1))
            print(json.dumps(metrics, indent=1))
            print(f"saved: {target}")
        elif args.command == "export":
            if args.rank is not None and args.to == "merged":
                raise ValueError("--rank applies to --to adapter only; a merged model is always exact.")
            target = Path(args.output)
            if target.is_dir() and any(target.iterdir()) and not args.overwrite:
                raise ValueError(
                    f"export folder {args.output!r} is not empty; choose an empty folder or pass --overwrite."
                )
            if target.exists() and not target.is_dir():
                raise ValueError(f"export path {args.output!r} is a file; choose a folder path.")
            finished = load_run(args.run)
            booster, tokenizer = finished.booster, finished.tokenizer
            if args.to == "adapter":
                booster.save_adapter(args.output, rank=args.rank, overwrite=args.overwrite)
            else:
                booster.save_merged(args.output, tokenizer=tokenizer, overwrite=args.overwrite)
            print(f"wrote {args.output}")
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"loraboost {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as stop:
        print(f"loraboost {args.command}: interrupted: {stop or 'stopped'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
