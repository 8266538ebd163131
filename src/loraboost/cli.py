"""The command line: `loraboost train | compare | eval | predict | export | demo`. Options come from the RunOptions and
BoostConfig dataclasses (read by flags.py); any of them can also be set in a YAML file (--config)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import BoostConfig
from .flags import (
    OneLineParser,
    add_dataclass_options,
    add_method_options,
    arms_for_compare,
    resolve,
    resolve_values,
    run_overrides,
    seed_list,
)
from .options import RunOptions
from .terminal import quiet_third_parties

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="loraboost",
        allow_abbrev=False,
        description="Fine-tune by boosting low-rank adapters (XGBLoRA, COLA, RAC-LoRA, ReLoRA, LoRA).",
        epilog="Example: loraboost train --method xgblora --data reviews.csv --label-words ' bad, good' "
        "--output runs/xgb   (then: loraboost eval runs/xgb; loraboost export runs/xgb --to merged out/)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show the libraries' own warnings and logs (hidden by default)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "train",
        help="fine-tune a model into a run folder",
        description="Fine-tune with transformers' Trainer and BoostCallback into a run folder.",
    )
    p.add_argument("--config", help="a YAML file of options (the flags below override it)")
    add_method_options(p)
    add_dataclass_options(p, RunOptions, "run")
    # One --seed drives both the data (splits, order) and the booster's plan and initialisations.
    add_dataclass_options(
        p, BoostConfig, "boosting (see BoostConfig; unset fields take the method's preset)", skip=("seed", "method")
    )

    p = commands.add_parser(
        "compare",
        help="several methods x seeds on the same data and budget",
        description="Train several methods with several seeds on the same data and step budget; "
        "write a table and a figure (compare.md, compare.png) into --output.",
    )
    p.add_argument("--config", help="a YAML file of options (the flags below override it)")
    p.add_argument(
        "--methods",
        type=lambda text: [name for name in text.split(",") if name],
        default=["lora", "cola", "xgblora"],
        help="comma-separated methods: booster presets and variants, full, full-blocks, galore, apollo, apollo-mini "
        "(see loraboost train --help)",
    )
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--no-base", action="store_true", help="skip the untuned model's row")
    # Refused with a sentence that says what to write instead (it names one method; compare trains several).
    p.add_argument("--full-finetune", action="store_true", default=None, help=argparse.SUPPRESS)
    add_dataclass_options(p, RunOptions, "run (shared by every method)", skip=("seed", "overwrite", "resume"))
    add_dataclass_options(
        p,
        BoostConfig,
        "boosting overrides (applied to every method they apply to: all to a booster, --rank and "
        "--steps-per-round to a peer's projection, none to full fine-tuning)",
        skip=("seed", "method"),
    )

    p = commands.add_parser(
        "eval",
        help="score a finished run (its held-out splits, one --split, or another --data file), or a base model",
        description="Score a finished run on its held-out splits, on one --split, or on another data file (--data, "
        "read with the run's columns and template unless given); or a base model before fine-tuning (given with "
        "--model, --data and the task options).",
    )
    p.add_argument("run", nargs="?", help="a run folder written by loraboost train; omit to score --model")
    p.add_argument(
        "--metrics-file",
        help="where to save the metrics (default: RUN/eval.json, RUN/eval-data.json with --data, RUN/eval-SPLIT.json "
        "with --split; eval.json for a base model)",
    )
    p.add_argument("--split", choices=["train", "validation", "test"], help="score only this split of the run's data")
    p.add_argument("--config", help="a YAML file of options for a base model")
    add_dataclass_options(
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

    p = commands.add_parser(
        "predict",
        help="apply a finished run to new texts",
        description="Apply a finished run to every row of a data file: the predicted class and its probability "
        "(classify), the generated response (sft) or continuation (lm), written as CSV beside the input columns.",
    )
    p.add_argument("run", help="a run folder written by loraboost train")
    p.add_argument("--data", required=True, help="a .csv/.tsv/.jsonl/.json/.parquet file (or an embedded data set)")
    p.add_argument("--output", required=True, help="the CSV file to write")
    p.add_argument("--text-column", help="the column to classify, or to continue (lm; default: the run's)")
    p.add_argument("--messages-column", help="the column of conversations to answer (sft; default: the run's)")
    p.add_argument("--prompt-column", help="the column with the prompts (sft; default: the run's)")
    p.add_argument("--template", help="the prompt template (default: the run's)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per response (sft; default: 64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")

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
    for command in commands.choices.values():
        command.allow_abbrev = False  # a prefix such as --method must never be taken for --methods
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv
    if not verbose:
        quiet_third_parties()  # before the libraries load: some warn as they are imported
    argv = [arg for arg in argv if arg != "--verbose"]
    if argv[:1] == ["demo"]:
        from .demo import main as demo

        return demo(argv[1:])
    args = build_parser().parse_args(argv)
    # The libraries load here, after the terminal is set up.
    from .atomic import atomic_file
    from .errors import first_line
    from .export import check_adapter_file
    from .run import load_run, prepare, train
    from .run_folder import STATE, check_not_run_files
    from .task import majority_warning, other_data

    try:
        if args.command == "train":
            options, arm = resolve(args)
            summary = train(options, arm)
            print(json.dumps(summary, indent=1))
            saved = "adapter in {}/adapter" if arm.kind == "booster" else "fine-tuned model in {}/model"
            print(f"run folder: {options.output} ({saved.format(options.output)})")
        elif args.command == "compare":
            from .compare import compare

            options, values = resolve_values(args)
            arms = arms_for_compare(args.methods, values)  # validates every method before any run starts
            compare(options, arms, args.seeds, options.output, include_base=not args.no_base)
        elif args.command == "eval":
            if args.metrics_file is not None and not args.metrics_file.strip():
                raise ValueError("--metrics-file is empty; name the .json file to write, or leave it out.")
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
                print(f"loraboost eval: scoring {run} from {run / STATE}", file=sys.stderr)
                model, task, splits, name = finished.booster.model, finished.task, finished.splits, "eval"
                changes = run_overrides(args)
                if changes:  # another data set, through the run's own columns and template unless given
                    task, data = other_data(finished, changes)
                    splits, name = {"train": finished.splits["train"], "data": task.prepare(data)}, "eval-data"
                if args.split:
                    if args.split not in splits:
                        raise ValueError(
                            f"--split {args.split!r} is not a split of this run; use one of {list(splits)}."
                        )
                    splits = {"train": splits["train"], args.split: splits[args.split]}
                    name = f"eval-{args.split}"
                metrics = task.score(model, splits)
                if args.split == "train":
                    metrics["train"] = task.evaluate(model, splits["train"])
                target = Path(args.metrics_file or run / f"{name}.json")
            else:
                if args.split:
                    raise ValueError("--split applies to a finished run; a base model is scored on its test split.")
                options, _ = resolve_values(args)
                model, _, task, splits = prepare(options)
                metrics = task.score(model, splits)
                target = Path(args.metrics_file or "eval.json")
            if target.is_dir():
                raise ValueError(f"--metrics-file {str(target)!r} is a folder; name a .json file to write.")
            check_not_run_files(target, "--metrics-file", allowed=("eval*.json",))
            with atomic_file(target) as staging:
                staging.write_text(json.dumps(metrics, indent=1))
            print(json.dumps(metrics, indent=1))
            warning = majority_warning(metrics)
            if warning:
                print(warning, file=sys.stderr)
            print(f"saved: {target}")
        elif args.command == "predict":
            output = Path(args.output)
            if output.is_dir():
                raise ValueError(f"--output {args.output!r} is a folder; name the CSV file to write.")
            check_not_run_files(output, "--output")
            if output.exists() and not args.overwrite:
                raise ValueError(f"--output {args.output!r} exists; choose another file or pass --overwrite.")
            finished = load_run(args.run)
            given = ("text_column", "prompt_column", "messages_column", "template")
            columns = {k: getattr(args, k) for k in given if getattr(args, k)}
            task, data = other_data(finished, {**columns, "data": args.data}, labelled=False)
            for column, values in task.predict(finished.booster.model, data, args.max_new_tokens).items():
                data = data.add_column(column, values)
            with atomic_file(output) as staging:
                data.to_csv(str(staging), index=False)
            print(f"wrote {len(data)} predictions to {output}")
        elif args.command == "export":
            if args.rank is not None and args.to == "merged":
                raise ValueError("--rank applies to --to adapter only; a merged model is always exact.")
            target = Path(args.output)
            # Into a run only to rebuild its own adapter (what eval suggests when RUN/adapter is damaged).
            own_adapter = target.resolve() == (Path(args.run) / "adapter").resolve() and args.to == "adapter"
            check_not_run_files(target, "export folder", allowed=("adapter",) if own_adapter else ())
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
    except OSError as error:  # a full disk, a read-only folder, a path under a file: one sentence, no traceback
        where = f" at {str(error.filename)!r}" if error.filename else ""
        print(
            f"loraboost {args.command}: error: the system refused a file operation{where} "
            f"({error.strerror or first_line(error)}); free some space or choose a path you can write to.",
            file=sys.stderr,
        )
        return USAGE_ERROR
    except KeyboardInterrupt as stop:
        print(f"loraboost {args.command}: interrupted: {stop or 'stopped'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
