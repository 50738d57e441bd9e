"""Checks of a model directory and a device, run before any output is written.

A folder without tokenizer files still loads in transformers (with an empty vocabulary: every token becomes
[UNK] and the scores are garbage, silently), and a ``max_length`` beyond the position embeddings fails deep
inside the first forward pass. Both are caught here with a message naming the folder and the option.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from maw_reranker.utils.errors import OptionError

# Any one of these makes a folder loadable by AutoTokenizer (fast JSON, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "spm.model", "tokenizer.model")
# RoBERTa-style embeddings reserve the first padding_idx + 1 positions.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer"}


class ModelCheckError(ValueError):
    """The model directory cannot be used as configured; the message names the folder and what to do."""


def usable_positions(config: dict) -> int | None:
    """How many tokens the model's position embeddings allow (None: no absolute limit, e.g. DeBERTa-v2)."""
    limit = config.get("max_position_embeddings")
    if limit is None:
        return None
    model_type = config.get("model_type", "")
    if model_type.startswith("deberta") and not config.get("position_biased_input", True):
        return None  # relative positions only
    if model_type in _OFFSET_POSITIONS:
        return int(limit) - int(config.get("pad_token_id", 1)) - 1
    return int(limit)


def check_model_dir(path: str | Path, max_length: int | None = None, option: str = "model") -> None:
    """Raise :class:`ModelCheckError` for a local model folder that would load but not work; hub ids pass."""
    if Path(path).is_file():
        raise ModelCheckError(f"option '{option}': {path} is a file; give a model folder or a hub id")
    _check_model_dir(str(Path(path).absolute()) if Path(path).is_dir() else str(path), max_length, option)


@functools.lru_cache(maxsize=64)  # a suite checks the same folder for every seed and dataset
def _check_model_dir(path: str, max_length: int | None, option: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        return  # a hub id: transformers reports its own download errors
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelCheckError(f"option '{option}': {folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCheckError(f"option '{option}': {config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelCheckError(f"option '{option}': {config_file} must hold a JSON object (a model config)")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ModelCheckError(f"option '{option}': {config_file} is not a usable model config: "
                              f"{_first_line(exc)}") from None
    _check_weights(folder, option)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelCheckError(
            f"option '{option}': {folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
            "transformers would build an empty vocabulary and score garbage: copy the tokenizer of the checkpoint "
            "this model was trained from into the folder")
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - tokenizers raise anything from JSON errors to Rust panics
        raise ModelCheckError(f"option '{option}': the tokenizer files in {folder} cannot be loaded: "
                              f"{_first_line(exc)}") from None
    vocab = config.get("vocab_size")
    if vocab is not None and len(tokenizer) > int(vocab):
        raise ModelCheckError(f"option '{option}': the tokenizer in {folder} has {len(tokenizer)} tokens but the "
                              f"model's embeddings only {vocab}: mismatched tokenizer and weights")
    if vocab is not None and len(tokenizer) < 8 and int(vocab) > 100:
        raise ModelCheckError(f"option '{option}': the tokenizer in {folder} has only {len(tokenizer)} tokens for "
                              f"a model with {vocab}: its vocabulary file is empty or unreadable")
    positions = usable_positions(config)
    if max_length is not None and positions is not None and max_length > positions:
        raise OptionError(f"option 'max_length' ({max_length}) exceeds the {positions} positions of {folder}; "
                              f"use at most {positions}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_weights(folder: Path, option: str) -> None:
    """The weights are there and their headers readable (a truncated download fails here, not mid-load)."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if not safetensors and not any(folder.glob("*.bin")) and not any(folder.glob("*.pt")):
        raise ModelCheckError(f"option '{option}': {folder} has no weights (no *.safetensors or *.bin file)")
    from safetensors import safe_open

    for path in safetensors:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
            raise ModelCheckError(f"option '{option}': {path} is not a readable safetensors file (truncated "
                                  f"download?): {_first_line(exc)}") from None


def check_device(device: str | None, option: str = "device") -> None:
    """Raise ValueError when ``device`` names an accelerator this machine does not have."""
    if not device:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"option '{option}': {device!r} is not a device ({exc}); use cpu, cuda, cuda:1 ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"option '{option}': {device!r} asked for, but CUDA is not available on this machine "
                             "(no GPU, or a CPU-only PyTorch build); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"option '{option}': {device!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"option '{option}': {device!r} asked for, but MPS is not available on this machine")
