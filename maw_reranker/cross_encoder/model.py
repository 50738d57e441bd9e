"""`CrossEncoderWithMAW`: a Hugging Face cross-encoder (optionally MAW-patched) with load/save/predict/rank."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from maw_reranker.maw.config import CONFIG_NAME, MAWConfig
from maw_reranker.maw.patcher import (load_maw_state_dict, maw_layers, maw_state_dict, patch_model, repatch,
                                      set_maw_strength, unpatch_model)
from maw_reranker.utils.progress import progress_bar

logger = logging.getLogger(__name__)

MAW_WEIGHTS_NAME = "maw_model.safetensors"
SETTINGS_NAME = "maw_cross_encoder.json"
PRECISIONS = ("fp32", "bf16", "fp16")
_AUTO = "auto"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CrossEncoderWithMAW(nn.Module):
    """A sequence-classification cross-encoder (one relevance logit per pair), with MAW in its last layers.

    >>> model = CrossEncoderWithMAW.from_pretrained("cross-encoder/ms-marco-MiniLM-L-12-v2", maw=MAWConfig())
    >>> model.predict([("what is maw", "MAW is multi-attention-weight attention")])
    """

    def __init__(self, model: nn.Module, tokenizer: Any, maw: MAWConfig | None = None, max_length: int | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        limit = getattr(tokenizer, "model_max_length", 512) or 512
        self.max_length = int(max_length or min(limit, 512))
        # predict() tokenizes once (to sort by length) and pads per batch; that is intended, not a slow path.
        if hasattr(tokenizer, "deprecation_warnings"):
            tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
        if maw is not None and maw.use_maw and not maw_layers(model):
            patch_model(model, maw)

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, maw: MAWConfig | None | str = _AUTO,
                        max_length: int | None = None, device: str | torch.device | None = None,
                        torch_dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                        **hf_kwargs) -> "CrossEncoderWithMAW":
        """Load a cross-encoder from a hub id or a directory.

        ``maw="auto"`` (default): restore the MAW settings and parameters saved in the directory, or no MAW if none
        were saved. ``maw=MAWConfig(...)``: inject MAW with these settings (a directory's saved MAW parameters are
        loaded if the settings match). ``maw=None``: the unpatched model.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(name_or_path)
        saved_cfg = MAWConfig.load(path) if (path / CONFIG_NAME).is_file() else None
        settings = json.loads((path / SETTINGS_NAME).read_text()) if (path / SETTINGS_NAME).is_file() else {}
        if maw == _AUTO:
            maw = saved_cfg
        elif maw is not None and not isinstance(maw, MAWConfig):
            raise TypeError(f"maw must be a MAWConfig, None or 'auto', got {type(maw).__name__}")
        if maw is not None and not maw.use_maw:
            maw = None  # MAWConfig(use_maw=False) is the unpatched baseline, as maw=None
        kwargs = dict(hf_kwargs)
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        kwargs.setdefault("num_labels", 1)
        model = AutoModelForSequenceClassification.from_pretrained(str(name_or_path), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        encoder = cls(model, tokenizer, maw=maw, max_length=max_length or settings.get("max_length"))
        weights = path / MAW_WEIGHTS_NAME
        if maw is not None and weights.is_file() and saved_cfg is not None:
            if saved_cfg == maw:
                from safetensors.torch import load_file

                load_maw_state_dict(model, load_file(str(weights)))
            else:
                logger.warning("%s holds MAW parameters for different settings; MAW starts fresh", path)
        encoder.to(device or default_device())
        encoder.eval()
        return encoder

    @property
    def maw_config(self) -> MAWConfig | None:
        return getattr(self.model, "maw_config", None)

    def set_maw_strength(self, strength: float) -> None:
        """Set alpha for every MAW layer (one change to the config they share)."""
        set_maw_strength(self.model, strength)

    @classmethod
    def from_sentence_transformers(cls, model, maw: MAWConfig | None | str = _AUTO, max_length: int | None = None,
                                   device: str | torch.device | None = None) -> "CrossEncoderWithMAW":
        """From a ``sentence_transformers.CrossEncoder`` object (its model is copied: the object is left as it was)
        or folder/hub id (loaded as :meth:`from_pretrained` does). ``maw`` as in :meth:`from_pretrained`: ``"auto"``
        keeps the MAW a CrossEncoder loaded from a portable checkpoint carries (or none), a ``MAWConfig`` injects
        MAW, ``None`` is the unpatched model. Scores are logits (sentence-transformers applies a sigmoid to one-label
        models by default: ``predict(..., activation="sigmoid")``). See ``cross_encoder/st_interop.py``."""
        from maw_reranker.cross_encoder.st_interop import from_sentence_transformers

        return from_sentence_transformers(cls, model, maw=maw, max_length=max_length, device=device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save_pretrained(self, directory: str | os.PathLike, card=None) -> Path:
        """Write a standard Hugging Face directory (backbone + head + tokenizer) plus ``maw_config.json`` and
        ``maw_model.safetensors`` (MAW parameters only) and a model card (``README.md``, with the facts it is made
        from in ``maw_card.json``; ``card``: a ``cross_encoder.card.CardInfo`` of what the caller knows, e.g. the
        training run). Written to a temp folder first, then swapped in."""
        from safetensors.torch import save_file

        from maw_reranker.cross_encoder.card import CardInfo, write_card_files

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        config = self.maw_config
        removed = unpatch_model(self.model) if config is not None else {}
        try:
            self.model.save_pretrained(tmp)
        finally:
            if config is not None:
                repatch(self.model, removed)
        self.tokenizer.save_pretrained(tmp)
        (tmp / SETTINGS_NAME).write_text(json.dumps({"max_length": self.max_length}, indent=2) + "\n")
        if config is not None:
            config.save(tmp)
            state = {k: v.contiguous().cpu() for k, v in maw_state_dict(self.model).items()}
            if state:
                save_file(state, str(tmp / MAW_WEIGHTS_NAME))
            from maw_reranker.cross_encoder.portable import write_portable_code

            write_portable_code(tmp)  # modeling_maw.py + auto_map: loads with trust_remote_code, no package needed
        card = card or CardInfo()
        counts = {"saved_total": sum(p.numel() for p in self.model.parameters()),
                  "saved_maw": sum(p.numel() for p in maw_state_dict(self.model).values())}
        write_card_files(tmp, card.replace(parameters={**card.parameters, **counts}), title=directory.name)
        _swap_in(tmp, directory)
        return directory

    def push_to_hub(self, repo_id: str, private: bool = True, commit_message: str | None = None,
                    token: str | None = None, revision: str | None = None, create_pr: bool = False, card=None,
                    exist_ok: bool = True) -> str:
        """Upload a ``save_pretrained`` folder (written to a temp folder) to the Hub repo ``repo_id``, created private
        unless ``private=False``; returns the commit's URL. See ``cross_encoder/hub.py``."""
        from maw_reranker.cross_encoder.hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, commit_message=commit_message, token=token,
                           revision=revision, create_pr=create_pr, card=card, exist_ok=exist_ok)

    # -- scoring ----------------------------------------------------------------------------------------------
    def tokenize(self, pairs: Sequence[tuple[str, str]], padding: bool = True) -> dict:
        queries = [q for q, _ in pairs]
        docs = [d for _, d in pairs]
        return self.tokenizer(queries, docs, truncation=True, max_length=self.max_length, padding=padding,
                              return_tensors="pt" if padding else None)

    def forward(self, **features) -> torch.Tensor:
        """Relevance logits ``[B]`` in float32."""
        out = self.model(**features)
        return out.logits[:, 0].float()

    def autocast(self, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def predict(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32, precision: str = "fp32",
                activation: str | None = None, show_progress_bar: bool = False, return_depth: bool = False):
        """Score (query, document) pairs. Batches are formed from length-sorted pairs with dynamic padding.

        Returns a float32 array of logits (``activation="sigmoid"`` maps them to (0, 1)); with ``return_depth``
        also ``{layer_index: {"weights": [N, D], "selected": [N]}}`` for the MAW layers.
        """
        pairs = list(pairs)
        if not pairs:
            return (np.zeros(0, dtype=np.float32), {}) if return_depth else np.zeros(0, dtype=np.float32)
        was_training = self.training
        self.eval()
        encoded = self.tokenize(pairs, padding=False)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        scores = np.zeros(len(pairs), dtype=np.float32)
        layers = {m.layer_index: m for m in maw_layers(self.model).values()}
        depth = depth_buffers(layers, len(pairs)) if return_depth else {}
        progress = progress_bar(len(pairs), show_progress_bar, "scoring")
        keys = list(encoded.keys())
        for start in range(0, len(pairs), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer.pad({k: [encoded[k][i] for i in idx] for k in keys}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.autocast(precision):
                logits = self(**batch)
            scores[idx] = logits.float().cpu().numpy()
            if return_depth:
                record_depth(depth, layers, idx)
            progress.update(len(idx))
        progress.close()
        self.train(was_training)
        if activation == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
        elif activation is not None:
            raise ValueError(f"activation must be None or 'sigmoid', got {activation!r}")
        return (scores, depth) if return_depth else scores

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, batch_size: int = 32,
             return_documents: bool = False, **predict_kwargs) -> list[dict]:
        """Rank documents for one query: ``[{"corpus_id": i, "score": s[, "text": doc]}]``, best first."""
        scores = self.predict([(query, doc) for doc in documents], batch_size=batch_size, **predict_kwargs)
        order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))[:top_k]
        return [{"corpus_id": i, "score": float(scores[i]), **({"text": documents[i]} if return_documents else {})}
                for i in order]

    def depth_log(self) -> dict[int, dict[str, list]]:
        """Depth weights and selected depth of each MAW layer's last forward pass."""
        return {m.layer_index: {"weights": m.last_depth_weights.tolist(), "selected": m.last_selected_depth.tolist()}
                for m in maw_layers(self.model).values() if m.last_depth_weights is not None}


def depth_buffers(layers: dict, n: int) -> dict:
    """``{layer_index: {"weights": [n, D], "selected": [n]}}`` to fill batch by batch with :func:`record_depth`."""
    return {i: {"weights": np.zeros((n, m.depth), np.float32), "selected": np.zeros(n, np.int64)}
            for i, m in layers.items()}


def record_depth(depth: dict, layers: dict, idx) -> None:
    """The depth weights and selected depth of each MAW layer's last forward, at positions ``idx``."""
    for i, m in layers.items():
        depth[i]["weights"][idx] = m.last_depth_weights.float().cpu().numpy()
        depth[i]["selected"][idx] = m.last_selected_depth.cpu().numpy()


def _swap_in(tmp: Path, directory: Path) -> None:
    """Replace ``directory`` by ``tmp`` so that a reader sees either the old or the new save, never a mix."""
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
