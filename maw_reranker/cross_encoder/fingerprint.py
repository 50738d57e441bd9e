"""Content fingerprints of a model: what a cached result (prefix states, teacher scores) depends on besides the text.

Weights are hashed, not names or paths, so a fine-tuned copy, a re-download or an in-place edit never reuses a
stale cache entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import torch

# Config entries that change no score or hidden state (names, bookkeeping, the attention kernel, output switches).
CONFIG_IGNORED = {"_name_or_path", "transformers_version", "_commit_hash", "architectures", "id2label", "label2id",
                  "num_labels", "problem_type", "_attn_implementation", "_attn_implementation_autoset",
                  "attn_implementation", "torch_dtype", "dtype", "classifier_dropout", "use_cache", "return_dict",
                  "output_attentions", "output_hidden_states", "tie_word_embeddings"}


def config_entries(config: Any) -> dict:
    """The model config as a dict, less the entries in :data:`CONFIG_IGNORED`."""
    return {k: v for k, v in config.to_dict().items() if k not in CONFIG_IGNORED}


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tokenizer_description(tokenizer: Any) -> str:
    """The tokenizer's full serialization (less per-call truncation/padding state) and its special tokens."""
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # per-call state the last tokenizer call left (max_length is keyed apart)
        spec.pop("padding", None)
        body = json.dumps(spec, sort_keys=True)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = {"class": type(tokenizer).__name__, "padding_side": getattr(tokenizer, "padding_side", None),
             "truncation_side": getattr(tokenizer, "truncation_side", None),
             "special": {k: str(v) for k, v in sorted((getattr(tokenizer, "special_tokens_map", {}) or {}).items())}}
    return json.dumps(extra, sort_keys=True) + "\n" + body


def fingerprint(head: dict, tokenizer: Any, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 hex digest of ``head`` (JSON), the tokenizer and the tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(tokenizer_description(tokenizer).encode()).digest())
    for name, tensor in named_tensors:
        h.update(f"\n{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()
