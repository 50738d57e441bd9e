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

from maw_reranker.cross_encoder.activation import apply_activation, check_activation, is_one_pair
from maw_reranker.cross_encoder.prefix import first_token_logits
from maw_reranker.maw.config import CONFIG_NAME, MAWConfig
from maw_reranker.maw.patcher import (find_attention_modules, load_maw_state_dict, maw_layers,
                                      maw_named_parameters, maw_state_dict, patch_model, repatch, set_maw_strength,
                                      unpatch_model)
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
                        fresh_maw: bool = False, **hf_kwargs) -> "CrossEncoderWithMAW":
        """Load a cross-encoder from a hub id or a directory.

        ``maw="auto"`` (default): restore the MAW settings and parameters saved with the model, or no MAW if none
        were saved. ``maw=MAWConfig(...)``: inject MAW with these settings; when the model saved MAW, its trained
        parameters load whenever the structure is the same (``MAWConfig.structure_diff``: depth, source, rank,
        gating, layers) and the requested settings (strength, seeds, sharpness, temperature) apply to them; another
        structure is an error naming the fields, unless ``fresh_maw=True`` asks for fresh MAW parameters.
        ``maw=None``: the unpatched model.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from maw_reranker.cross_encoder.loading import HUB_KWARGS, hub_error, is_local, model_file, reconcile_maw, \
            saved_maw_config

        if maw != _AUTO and maw is not None and not isinstance(maw, MAWConfig):
            raise TypeError(f"maw must be a MAWConfig, None or 'auto', got {type(maw).__name__}")
        if isinstance(maw, MAWConfig) and not maw.use_maw:
            maw = None  # MAWConfig(use_maw=False) is the unpatched baseline, as maw=None
        name = str(name_or_path)
        hub = {k: hf_kwargs[k] for k in HUB_KWARGS if k in hf_kwargs}  # the MAW files come from the same revision
        saved_cfg = saved_maw_config(name, **hub)
        settings_file = model_file(name, SETTINGS_NAME, **hub)
        settings = json.loads(settings_file.read_text()) if settings_file is not None else {}
        kwargs = dict(hf_kwargs)
        if saved_cfg is not None:
            # A folder this package saved: the package applies its MAW; the portable remote code would do it twice.
            kwargs.pop("trust_remote_code", None)
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        kwargs.setdefault("num_labels", 1)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(name, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(name, **hub)
        except OSError as exc:
            if is_local(name):
                raise
            raise hub_error(name, exc) from None
        num_layers = max(find_attention_modules(model), default=-1) + 1
        maw, load_saved = reconcile_maw(saved_cfg, maw, num_layers, fresh_maw, name)
        encoder = cls(model, tokenizer, maw=maw, max_length=max_length or settings.get("max_length"))
        if load_saved and maw is not None:
            _load_saved_maw(model, model_file(name, MAW_WEIGHTS_NAME, **hub), saved_cfg, maw, name)
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
                                   device: str | torch.device | None = None,
                                   fresh_maw: bool = False) -> "CrossEncoderWithMAW":
        """From a ``sentence_transformers.CrossEncoder`` object (its model is copied: the object is left as it was)
        or folder/hub id (loaded as :meth:`from_pretrained` does). ``maw`` and ``fresh_maw`` as in
        :meth:`from_pretrained`, the MAW a CrossEncoder carries (loaded from a portable checkpoint, or patched)
        playing the saved one's part: ``"auto"`` keeps it (or none). Scores are logits (sentence-transformers applies
        a sigmoid to one-label models by default: ``predict(..., activation="sigmoid")``). See
        ``cross_encoder/st_interop.py``."""
        from maw_reranker.cross_encoder.st_interop import from_sentence_transformers

        return from_sentence_transformers(cls, model, maw=maw, max_length=max_length, device=device,
                                          fresh_maw=fresh_maw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save_pretrained(self, directory: str | os.PathLike, card=None) -> Path:
        """Write a standard Hugging Face directory (backbone + head + tokenizer) plus ``maw_config.json`` and
        ``maw_model.safetensors`` (MAW parameters only) and a model card (``README.md``, with the facts it is made
        from in ``maw_card.json``; ``card``: a ``cross_encoder.card.CardInfo`` of what the caller knows, e.g. the
        training run). Written to a temp folder first, then swapped in."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self._write_pretrained(tmp, directory, card)
        except BaseException:  # a full disk, Ctrl-C: no partial folder is left behind, the earlier one stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _swap_in(tmp, directory)
        return directory

    def _write_pretrained(self, tmp: Path, directory: Path, card) -> None:
        from safetensors.torch import save_file

        from maw_reranker.cross_encoder.card import CardInfo, write_card_files

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
        """Relevance logits ``[B]`` in float32. The last layer computes only what the head reads (its first token,
        ``prefix.first_token_logits``); the logits are a full pass's."""
        with first_token_logits(self.model):
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
    def predict(self, pairs: Sequence[tuple[str, str]] | tuple[str, str], batch_size: int = 32,
                precision: str = "fp32", activation: str | None = None, show_progress_bar: bool = False,
                return_depth: bool = False):
        """Score (query, document) pairs, as sentence-transformers' ``CrossEncoder.predict``: a list of pairs gives a
        float32 array, one pair ``("query", "document")`` one score. Batches are formed from length-sorted pairs with
        dynamic padding.

        ``activation``: None (default) returns logits; ``"sigmoid"`` maps them to (0, 1), sentence-transformers'
        default for one-label models (the ranking is the same). With ``return_depth`` also
        ``{layer_index: {"weights": [N, D], "selected": [N]}}`` for the MAW layers.
        """
        check_activation(activation)
        single = is_one_pair(pairs)
        pairs = [tuple(pairs)] if single else list(pairs)
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
        scores = apply_activation(scores, activation)
        if single:
            scores = scores[0]
        return (scores, depth) if return_depth else scores

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, batch_size: int = 32,
             return_documents: bool = False, **predict_kwargs) -> list[dict]:
        """Rank documents for one query as sentence-transformers' ``CrossEncoder.rank``: ``[{"corpus_id": i,
        "score": s}]`` (with ``"text"`` when ``return_documents``), best first, the top ``top_k``; ``predict_kwargs``
        (``activation``, ``precision``, ...) as :meth:`predict`."""
        scores = self.predict([(query, doc) for doc in documents], batch_size=batch_size, **predict_kwargs)
        order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))[:top_k]
        return [{"corpus_id": i, "score": float(scores[i]), **({"text": documents[i]} if return_documents else {})}
                for i in order]

    def depth_log(self) -> dict[int, dict[str, list]]:
        """Depth weights and selected depth of each MAW layer's last forward pass."""
        return {m.layer_index: {"weights": m.last_depth_weights.tolist(), "selected": m.last_selected_depth.tolist()}
                for m in maw_layers(self.model).values() if m.last_depth_weights is not None}


def _load_saved_maw(model: nn.Module, weights: Path | None, saved: MAWConfig, maw: MAWConfig, name: str) -> None:
    """The saved MAW parameters into ``model`` (patched with ``maw``, of the saved structure); trained parameters
    whose file is missing are an error, never a silent fresh start."""
    if weights is None:
        if any(True for _ in maw_named_parameters(model)):
            raise FileNotFoundError(f"{name}: {CONFIG_NAME} says MAW {saved.gating_mode} was saved with trained "
                                    f"parameters, but {MAW_WEIGHTS_NAME} is missing; restore it, or load with "
                                    "fresh_maw=True (CLI: --fresh-maw) to start MAW fresh")
        return
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights}: unreadable MAW parameters ({exc})") from None
    if maw.maw_random_seed != saved.maw_random_seed:
        # `random` weights are drawn from the seed, not trained: the requested seed's draw stays.
        state = {k: v for k, v in state.items() if not k.endswith("random_weights")}
        state.update({k: v for k, v in maw_state_dict(model).items() if k.endswith("random_weights")})
    try:
        load_maw_state_dict(model, state)
    except ValueError as exc:
        raise ValueError(f"{weights}: {exc}") from None


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
