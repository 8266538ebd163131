"""How the command line reads options: each dataclass field becomes a flag (its help from the field's docstring
entry), a flag's value is read by the field's declared type, and a YAML config file comes first with the flags
over it."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import yaml

from .arms import ARMS, PEER_OPTIONS, Arm, get_arm
from .config import BoostConfig
from .options import RunOptions


def field_help(cls) -> dict[str, str]:
    """Each field's help from the ``Args:`` section of the dataclass's docstring (the one place a field is
    documented, for Python and the command line alike): its first sentence, on one line, without markup."""
    doc = inspect.getdoc(cls) or ""
    if "Args:" not in doc:
        return {}
    helps: dict[str, str] = {}
    name = None
    for line in doc.split("Args:", 1)[1].splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name, helps[entry.group(1)] = entry.group(1), entry.group(2)
        elif name and line.startswith("        "):
            helps[name] += " " + line.strip()
        elif line.strip():
            name = None  # the end of the section
    # A sentence ends at a full stop before a capital letter ("e.g. the" goes on).
    first = {key: re.split(r"(?<=\.)\s(?=[A-Z])", text.replace("``", ""), maxsplit=1)[0] for key, text in helps.items()}
    return {key: text.rstrip(".") for key, text in first.items()}


class _ExplicitNone:
    """A flag given as ``none``: unlike an absent flag (None), it sets an optional field to None over the
    method's preset and the YAML file. Falsy, so code that asks only "was a value given?" skips it."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "None"


EXPLICIT_NONE: Any = _ExplicitNone()


def given_flags(args: argparse.Namespace, names=None) -> dict[str, Any]:
    """The flags typed on the command line (those left out are None), each ``none`` read as None."""
    return {
        k: None if v is EXPLICIT_NONE else v
        for k, v in vars(args).items()
        if v is not None and (names is None or k in names)
    }


def typed_parser(annotation: str, flag: str):
    """How a flag's text becomes the value of a field declared ``annotation`` (e.g. ``int | None``): a whole
    number, a number, text kept exactly as typed, or a comma-separated list of text; ``none`` for an optional
    field. A flag's value never changes type by how it looks (``2024`` stays text for a text field)."""
    kinds = {part.strip() for part in annotation.split("|")}
    optional = "None" in kinds
    kinds.discard("None")

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null"):
            return EXPLICIT_NONE
        if kinds <= {"int", "float"}:
            try:
                return int(text)
            except ValueError:
                pass
            if "float" in kinds:
                try:
                    return float(text)
                except ValueError:
                    pass
            kind = "a whole number" if kinds == {"int"} else "a number"
            raise argparse.ArgumentTypeError(f"{flag} expects {kind}, not {text!r}")
        if kinds == {"list[str]"} or (kinds == {"str", "list[str]"} and "," in text):
            return [part for part in text.split(",") if part]
        return text

    return parse


def add_dataclass_options(parser: argparse.ArgumentParser, cls, title: str, skip=()) -> None:
    group = parser.add_argument_group(title)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, action="store_true", default=None, help=helps[f.name])
        else:
            default = f.default if f.default is not dataclasses.MISSING else None
            # None and the preset sentinel mean "derived"; the help text says from what.
            shown = "" if default is None or repr(default).startswith("<") else f" (default: {default})"
            group.add_argument(
                flag,
                type=typed_parser(str(f.type), flag),
                default=None,
                metavar="VALUE",
                help=helps[f.name] + shown,
            )


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """``--method`` names an arm of the catalogue; ``--full-finetune`` is the older spelling of ``--method full``."""
    parser.add_argument(
        "--method",
        metavar="NAME",
        help=f"what trains (default: xgblora): {', '.join(ARMS)}",
    )
    parser.add_argument("--full-finetune", action="store_true", default=None, help="the same as --method full")


def resolve_values(args: argparse.Namespace) -> tuple[RunOptions, dict[str, Any]]:
    """YAML first, then the flags given on the command line: the run options and every other value given
    (BoostConfig fields, ``method``, ``full_finetune``)."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_config(args.config))
    skip = ("command", "config", "methods", "seeds", "no_base", "run", "metrics_file", "verbose", "split")
    values.update({k: v for k, v in given_flags(args).items() if k not in skip})
    run_names = {f.name for f in dataclasses.fields(RunOptions)}
    boost_names = {f.name for f in dataclasses.fields(BoostConfig)} | {"full_finetune"}
    unknown = sorted(set(values) - run_names - boost_names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {args.config}; see loraboost train --help.")
    for key in ("label_words", "report_to"):  # lists, even when one item was given
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
    options = RunOptions(**{k: v for k, v in values.items() if k in run_names})
    return options, {k: v for k, v in values.items() if k in boost_names and k != "seed"}


def resolve(args: argparse.Namespace) -> tuple[RunOptions, Arm]:
    """The run options and the arm to train: ``--method`` (or ``--full-finetune``) with the BoostConfig values
    given applied to it (a value that does not apply to the arm is refused in one sentence)."""
    options, values = resolve_values(args)
    method = values.pop("method", None)
    if values.pop("full_finetune", None):
        if method not in (None, "full"):
            raise ValueError(
                f"--full-finetune is the same as --method full, but --method {method} was given too; pass only one."
            )
        method = "full"
    return options, get_arm(method if method is not None else "xgblora").with_options(values)


def arms_for_compare(names: list[Any], values: dict[str, Any]) -> list[Arm]:
    """The arms a comparison trains, each with the given BoostConfig values that apply to it (every value to a
    booster, the projection rank and update gap to a peer, none to full fine-tuning)."""
    if values.get("full_finetune"):
        raise ValueError("--full-finetune names one method; in compare, list full in --methods instead.")
    if "method" in values:
        raise ValueError("compare trains every method in --methods; drop --method (or list it in --methods).")
    arms = []
    for name in names:
        arm = get_arm(name)
        applies = {"booster": set(values), "peer": set(PEER_OPTIONS), "full": set()}[arm.kind]
        arms.append(arm.with_options({k: v for k, v in values.items() if k in applies}))
    duplicated = sorted({a.name for a in arms if [b.name for b in arms].count(a.name) > 1})
    if duplicated:
        raise ValueError(f"--methods names {duplicated[0]!r} twice; list each method once.")
    return arms


# What eval and predict may change about a finished run: the data and how it is read, never the model.
OTHER_DATA_OPTIONS = (
    "data",
    "text_column",
    "label_column",
    "prompt_column",
    "response_column",
    "messages_column",
    "template",
)


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data options given beside a finished run; any other run option is refused (the run fixes it)."""
    given = given_flags(args, {f.name for f in dataclasses.fields(RunOptions)})
    fixed = sorted(set(given) - set(OTHER_DATA_OPTIONS))
    if fixed:
        flag = "--" + fixed[0].replace("_", "-")
        raise ValueError(
            f"{flag} cannot change for a finished run (it trained with its own); only --data and its "
            "columns and template can."
        )
    return given


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


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors in one sentence (the usage block of a command with 60 options buries it)."""

    def error(self, message: str):
        message = message.rstrip(".")
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help.\n")


def seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated whole numbers >= 0."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects comma-separated whole numbers, not {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds expects distinct whole numbers >= 0, not {text!r}")
    return seeds
