"""Which model a run loads and how: the embedded models by name or a local transformers folder, an encoder
(with a new classification head) or a causal LM, and full fine-tuning's plain saved model."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from .assets import default_model_dir, gguf_model_dir, minilm_dir
from .atomic import atomic_folder
from .errors import first_line

# Embedded models by name; anything else is a local folder (no hub is reachable offline).
EMBEDDED_MODELS = {"default": default_model_dir, "smollm2": default_model_dir, "minilm": minilm_dir}


def model_folder(name: str) -> Path:
    """An embedded model (``default`` = ``smollm2``: SmolLM2-135M-Instruct; ``minilm``: all-MiniLM-L6-v2),
    a local model folder, or a GGUF model file (converted once into the cache, as the embedded default is)."""
    if name.lower().endswith(".gguf"):
        if not Path(name).is_file():
            raise ValueError(f"model {name!r} is not an existing GGUF file; pass the path of a .gguf model file.")
        try:
            return gguf_model_dir(Path(name))
        except (ValueError, KeyError, OSError) as error:
            raise ValueError(
                f"model {name!r} could not be read as a GGUF model ({type(error).__name__}: {first_line(error)}); "
                "transformers reads GGUF files of the architectures it lists, with their tokenizer inside."
            ) from None
    folder = EMBEDDED_MODELS[name]() if name in EMBEDDED_MODELS else Path(name)
    if not folder.is_dir():
        raise ValueError(
            f"model {name!r} is not a local folder, and no model hub is reachable offline; pass a folder "
            "saved with save_pretrained, a .gguf file, or one of the embedded models 'default' "
            "(SmolLM2-135M-Instruct) or 'minilm'."
        )
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"model folder {name!r} has no config.json, so it holds no transformers model; pass a "
            "folder saved with save_pretrained (config.json, weights and tokenizer files)."
        )
    return folder


def is_encoder(folder: Path) -> bool:
    """An encoder (BERT and kin) classifies with a head; a causal LM by label words."""
    architectures = transformers.AutoConfig.from_pretrained(folder).architectures or []
    return not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures)


def load_model(name: str, encoder_ok: bool, num_labels: int | None = None):
    """The model and tokenizer; an encoder (where the task can use one: ``encoder_ok``) gets a fresh
    classification head of ``num_labels`` classes."""
    folder = model_folder(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if is_encoder(folder):
        if not encoder_ok:
            raise ValueError(
                f"model {name!r} is an encoder, which supports task='classify' only; use a causal LM for this task."
            )
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_labels, dtype=torch.float32
        )
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


def head_module_name(model: nn.Module) -> str:
    """The classification head of a sequence-classification model (``classifier`` for BERT, ``score`` else)."""
    for name in ("classifier", "score"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"cannot find the classification head of {type(model).__name__}; set modules_to_save to its name.")


def save_model(model: nn.Module, tokenizer, folder: Path) -> None:
    """Save a plain transformers folder atomically (full fine-tuning's output)."""
    with atomic_folder(folder, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
