"""`PrefixCache`: the input of the first trainable layer, computed once per (query, document) pair, kept on disk.

Layout (one folder per model/prefix/length/dtype, under a root the caller picks)::

    <root>/<model_type>-s<start>-L<max_length>-<dtype>-<fingerprint[:16]>/
        meta.json                                # what the states are of (checked on open)
        shard-<ms>-<pid>-<rand>.safetensors      # states of a batch of pairs, written atomically

Identity. The folder name carries :func:`maw_reranker.cross_encoder.prefix.prefix_fingerprint` (a sha256 of the
config, ``start``, the prefix weights and buffers, the tokenizer, and the MAW config when MAW sits in the prefix),
``max_length`` and the storage dtype; ``meta.json`` holds the full digest and is compared on open. The states are of
the encoder's ``max_length`` when the cache was opened: a fill or read after ``encoder.max_length`` changed is
refused. A pair's key is :func:`pair_key`: sha256 of the JSON list ``[query, document]`` (unambiguous, unlike a
concatenation).

Storage. Each shard is one safetensors file: ``states [T, H]`` (the pairs' token rows concatenated, each pair only up
to its own length: no padding on disk), ``lengths [n]`` (int32), and in the header metadata the pairs' keys, the
format, fingerprint, ``max_length``, dtype and a sha256 of the keys and tensors. A shard is checked on first
open (about 1 s per GB): one that is unreadable (truncated, empty, a garbage header), damaged (checksum, shapes) or
of another cache (fingerprint, ``max_length``, dtype, format) is named in one warning, deleted, and its pairs are
computed again by the next fill; it is never served. A folder of an older format is emptied and rebuilt. Readers
memory-map the shards (``safe_open``) and copy out only the rows of the pairs asked for. Disk use is about
``mean tokens x hidden x bytes``: a MiniLM pair of 180 tokens is 180 x 384 x 2 = 138 KB in fp16.

Dtype. ``fp16`` (default: half the disk of fp32; hidden states of BERT-family models are O(1..100), far inside its
range, and its 11-bit mantissa moves logits by ~1e-3), ``bf16`` (the range of fp32, an 8-bit mantissa: ~1e-2) or
``fp32`` (exact: logits equal the full model's to 1e-4). States come back in the model's parameter dtype.

Resumable and crash-safe. New states collect in memory and are written as a shard when ``shard_mb`` is reached, at
the end of :meth:`PrefixCache.fill`, on :meth:`PrefixCache.flush` and on leaving a ``with`` block. A shard is
written to a hidden temporary and renamed into place, so a killed fill leaves complete shards only (at most the
states pending since the last shard are lost; a half-written temporary is removed by a later open once ten minutes
old) and the next fill computes only what is missing. Shard names are unique per writer, so two processes filling one
folder never overwrite each other (a pair both computed is stored twice, with the same states; the first shard read
wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from maw_reranker.cross_encoder.prefix import _check_start, hf_model, prefix_fingerprint, prefix_states
from maw_reranker.utils.io import atomic_write, write_json
from maw_reranker.utils.progress import progress_bar

CACHE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CACHE_FORMAT = "maw-prefix-cache/2"  # 2: per-shard fingerprint, max_length, dtype and checksum
OLD_FORMATS = ("maw-prefix-cache/1",)  # folders of these are emptied and rebuilt
META_NAME = "meta.json"
STALE_TEMP_SECONDS = 600  # a shard temporary untouched this long belongs to a killed writer

log = logging.getLogger(__name__)


class _BadShard(Exception):
    """A shard that must not be served (the message says why)."""


def shard_checksum(keys: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a shard's keys (their JSON text) and its tensors (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256(keys.encode("utf-8"))
    for name in ("lengths", "states"):
        t = tensors[name].contiguous()
        h.update(f"\n{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # bytes, whatever the dtype (numpy has no bf16)
    return h.hexdigest()


def _remove_old_temps(folder: Path) -> None:
    """Remove shard temporaries (``.shard-*.tmp``, see :func:`maw_reranker.utils.io.atomic_write`) that no writer
    has touched for ``STALE_TEMP_SECONDS``: those of killed fills, never a live writer's."""
    now = time.time()
    for tmp in folder.glob(".shard-*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
        except FileNotFoundError:
            pass


def pair_key(query: str, document: str) -> str:
    """The cache key of a pair: sha256 of its exact text (unambiguous: a JSON list, not a concatenation), 32 hex."""
    return hashlib.sha256(json.dumps([query, document], ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


class PrefixCache:
    """Prefix states of (query, document) pairs for one encoder split at ``start``, on disk under ``root``.

    >>> start = split_layer(encoder, k=1)
    >>> with PrefixCache("cache/prefix", encoder, start, dtype="fp16") as cache:
    ...     cache.fill(all_training_pairs)                 # progress bar; resumes a killed fill
    ...     batch = cache.get_or_compute(batch_pairs)      # {"hidden_states", "attention_mask"} on the model's device
    ...     logits = top_forward(encoder, batch, start)   # or: CachedScorer(encoder, cache).predict(pairs)

    ``encoder`` is a :class:`CrossEncoderWithMAW` (its ``tokenize`` and ``max_length`` define the tokens). The
    encoder's prefix must not change while the cache is used (freeze it: :func:`freeze_prefix`); the fingerprint is
    taken once, on open (:meth:`verify` takes it again). Not safe to share one object between threads or DataLoader
    worker processes (collate in the main process); several processes may each open their own object on one folder.

    Options: ``dtype`` of the stored states (``fp16``, ``bf16``, ``fp32``); ``batch_size`` of the prefix forward
    passes that fill it; ``shard_mb``, the pending states that make a shard; ``show_progress`` for :meth:`fill`;
    ``fingerprint``, a precomputed :func:`prefix_fingerprint` (skips hashing the prefix weights).
    """

    def __init__(self, root: str | os.PathLike, encoder: Any, start: int, *, dtype: str = "fp16",
                 batch_size: int = 32, shard_mb: float = 128.0, show_progress: bool = True,
                 fingerprint: str | None = None):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"PrefixCache dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"PrefixCache batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.start = _check_start(encoder, start)
        self.dtype = dtype
        self.storage_dtype = CACHE_DTYPES[dtype]
        self.batch_size = int(batch_size)
        self.shard_bytes = int(shard_mb * 2 ** 20)
        self.show_progress = show_progress
        model = hf_model(encoder)
        self.max_length = int(encoder.max_length)
        self.hidden_size = int(model.config.hidden_size)
        self.fingerprint = fingerprint or prefix_fingerprint(encoder, self.start)
        model_type = str(getattr(model.config, "model_type", "model")).replace("/", "_")
        self.path = Path(root) / f"{model_type}-s{self.start}-L{self.max_length}-{dtype}-{self.fingerprint[:16]}"
        self.meta = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "model_type": model_type,
                     "start": self.start, "max_length": self.max_length, "dtype": dtype,
                     "hidden_size": self.hidden_size, "name_or_path": getattr(model.config, "_name_or_path", "")}
        self._index: dict[str, tuple[int, int, int]] = {}  # key -> (shard number, first row, length)
        self._shards: list[Any] = []  # open safe_open handles
        self._shard_names: list[str] = []
        self._pending: dict[str, torch.Tensor] = {}  # key -> [length, H] in storage dtype, CPU
        self._pending_bytes = 0
        self._open()

    # -- opening ------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _remove_old_temps(self.path)  # temporaries of shards a killed fill was writing
        meta_file = self.path / META_NAME
        if meta_file.is_file():
            try:
                found = json.loads(meta_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{meta_file}: unreadable prefix-cache metadata ({exc}); remove the folder "
                                 f"{self.path} (it is rebuilt)") from None
            keys = ("fingerprint", "start", "max_length", "dtype", "hidden_size")
            if any(found.get(k) != self.meta[k] for k in keys) or (
                    found.get("format") != CACHE_FORMAT and found.get("format") not in OLD_FORMATS):
                raise ValueError(f"{self.path} holds a different prefix cache ({META_NAME} does not match this "
                                 "model, start, max_length, dtype and format); remove it or use another root")
            if found.get("format") != CACHE_FORMAT:
                shards = sorted(self.path.glob("shard-*.safetensors"))
                log.warning("prefix cache %s is of the older format %s: its %d shard(s) are deleted and rebuilt",
                            self.path, found.get("format"), len(shards))
                for shard in shards:
                    shard.unlink(missing_ok=True)
                write_json(meta_file, self.meta)
        else:
            write_json(meta_file, self.meta)
        self.refresh()

    def refresh(self) -> int:
        """Load shards written since the last look (by this or another process), each checked first (see the module
        docstring: a bad shard is logged, deleted and never served); returns how many were added."""
        known = set(self._shard_names)
        added = 0
        for shard in sorted(self.path.glob("shard-*.safetensors")):
            if shard.name in known:
                continue
            try:
                handle, keys, lengths = self._open_shard(shard)
            except _BadShard as exc:
                log.warning("prefix cache: shard %s %s: deleted, its pairs are computed again", shard, exc)
                shard.unlink(missing_ok=True)
                continue
            number = len(self._shards)
            self._shards.append(handle)
            self._shard_names.append(shard.name)
            row = 0
            for key, length in zip(keys, lengths):
                self._index.setdefault(key, (number, row, int(length)))
                row += int(length)
            added += 1
        return added

    def _open_shard(self, shard: Path) -> tuple[Any, list[str], list[int]]:
        """(handle, keys, lengths) of a shard of this cache, or a _BadShard saying what is wrong with it."""
        from safetensors import safe_open

        try:
            handle = safe_open(str(shard), framework="pt")
            meta = handle.metadata() or {}
            want = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "max_length": str(self.max_length),
                    "dtype": self.dtype}
            for name, value in want.items():
                if meta.get(name) != value:
                    raise _BadShard(f"is of another cache ({name} {str(meta.get(name))[:16]!r}, this cache's "
                                    f"{value[:16]!r})")
            keys = json.loads(meta["keys"])
            tensors = {name: handle.get_tensor(name) for name in ("lengths", "states")}
        except _BadShard:
            raise
        except Exception as exc:  # noqa: BLE001 - SafetensorError (empty, truncated, garbage), bad JSON, no tensor
            raise _BadShard(f"is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        if shard_checksum(meta["keys"], tensors) != meta.get("checksum"):
            raise _BadShard("is damaged (checksum mismatch)")
        lengths, states = tensors["lengths"], tensors["states"]
        if (not isinstance(keys, list) or lengths.dtype != torch.int32 or lengths.dim() != 1
                or len(keys) != lengths.numel() or states.dtype != self.storage_dtype
                or tuple(states.shape) != (int(lengths.sum()), self.hidden_size)):
            raise _BadShard("is damaged (tensor shapes or dtypes do not match its keys and this cache)")
        return handle, keys, lengths.tolist()

    def verify(self) -> None:
        """Raise if the encoder's prefix (weights, config, tokenizer) or ``max_length`` no longer matches the cached
        states."""
        self._check_max_length()
        now = prefix_fingerprint(self.encoder, self.start)
        if now != self.fingerprint:
            raise RuntimeError("the encoder's prefix changed since the prefix cache was opened: its states are stale "
                               "(was the prefix frozen? see freeze_prefix)")

    def _check_max_length(self) -> None:
        if int(self.encoder.max_length) != self.max_length:
            raise RuntimeError(f"prefix cache {self.path} holds states of max_length {self.max_length}, but "
                               f"encoder.max_length is now {self.encoder.max_length}: open a PrefixCache for it")

    # -- queries ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index) + sum(1 for k in self._pending if k not in self._index)

    def __contains__(self, pair: tuple[str, str]) -> bool:
        key = pair_key(*pair)
        return key in self._index or key in self._pending

    def missing(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The distinct pairs (first occurrence order) with no stored or pending states."""
        out, seen = [], set()
        for pair in pairs:
            key = pair_key(*pair)
            if key not in seen and key not in self._index and key not in self._pending:
                seen.add(key)
                out.append(tuple(pair))
        return out

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob("shard-*.safetensors"))

    # -- filling ------------------------------------------------------------------------------------------------
    def fill(self, pairs: Iterable[tuple[str, str]], show_progress: bool | None = None) -> int:
        """Compute and store the states of every pair not yet cached (length-sorted batches of ``batch_size``, a
        progress bar unless disabled), then flush. Returns the number of pairs computed."""
        todo = self.missing(pairs)
        self._compute(todo, self.show_progress if show_progress is None else show_progress)
        self.flush()
        return len(todo)

    def _compute(self, pairs: Sequence[tuple[str, str]], show_progress: bool) -> None:
        if not pairs:
            return
        self._check_max_length()  # the states must be of the length the folder is keyed by
        encoder = self.encoder
        tokenizer = encoder.tokenizer
        encoded = encoder.tokenize(pairs, padding=False)
        names = list(encoded.keys())
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        order = np.argsort(-lengths, kind="stable")  # similar lengths together: little padding
        bar = progress_bar(len(pairs), enabled=show_progress, desc="prefix cache")
        try:
            for first in range(0, len(pairs), self.batch_size):
                idx = order[first:first + self.batch_size]
                batch = tokenizer.pad({k: [encoded[k][i] for i in idx] for k in names}, return_tensors="pt")
                states = prefix_states(encoder, batch, self.start)
                hidden = states["hidden_states"].to(device="cpu", dtype=self.storage_dtype)
                valid = states["attention_mask"].to("cpu").bool()
                for row, i in enumerate(idx):
                    rows = hidden[row][valid[row]].clone()  # only the pair's own tokens
                    self._add_pending(pair_key(*pairs[i]), rows)
                bar.update(len(idx))
        finally:
            bar.close()

    def _add_pending(self, key: str, rows: torch.Tensor) -> None:
        if key in self._index or key in self._pending:
            return
        self._pending[key] = rows
        self._pending_bytes += rows.numel() * rows.element_size()
        if self._pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> Path | None:
        """Write the pending states as one shard (atomically); returns its path, or None if nothing was pending."""
        if not self._pending:
            return None
        from safetensors.torch import save

        keys = list(self._pending)
        rows = [self._pending[k] for k in keys]
        tensors = {"states": torch.cat(rows).contiguous(),
                   "lengths": torch.tensor([r.shape[0] for r in rows], dtype=torch.int32)}
        keys_json = json.dumps(keys)
        meta = {"format": CACHE_FORMAT, "keys": keys_json, "fingerprint": self.fingerprint,
                "max_length": str(self.max_length), "dtype": self.dtype,
                "checksum": shard_checksum(keys_json, tensors)}
        name = f"shard-{int(time.time() * 1000):015d}-{os.getpid()}-{secrets.token_hex(3)}.safetensors"
        path = self.path / name
        with atomic_write(path, "wb") as handle:
            handle.write(save(tensors, metadata=meta))
        self._pending.clear()
        self._pending_bytes = 0
        self.refresh()
        return path

    def close(self) -> None:
        """Flush, then release the shard handles."""
        self.flush()
        self._shards.clear()
        self._shard_names.clear()
        self._index.clear()

    def __enter__(self) -> "PrefixCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------------------
    def _rows(self, key: str) -> torch.Tensor:
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        number, first, length = self._index[key]
        return self._shards[number].get_slice("states")[first:first + length]

    def get(self, pairs: Sequence[tuple[str, str]], device: torch.device | str | None = None,
            dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """States of cached pairs as one right-padded batch: ``{"hidden_states": [B, L, H], "attention_mask": [B, L]
        (int64), "lengths": [B]}``, L the longest pair (what ``encoder.tokenize(pairs)`` pads to, so dropout masks
        match the uncached forward's shape). Padded rows are zero. Default device and dtype: the model's. A KeyError
        names the first pair not cached."""
        self._check_max_length()
        param = next(hf_model(self.encoder).parameters())
        device = param.device if device is None else torch.device(device)
        dtype = param.dtype if dtype is None else dtype
        rows = []
        for pair in pairs:
            key = pair_key(*pair)
            if key not in self._index and key not in self._pending:
                raise KeyError(f"pair not in the prefix cache: {pair[0][:40]!r}, {pair[1][:40]!r}")
            rows.append(self._rows(key))
        lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
        width = int(lengths.max()) if rows else 0
        hidden = torch.zeros(len(rows), width, self.hidden_size, dtype=dtype)
        for i, r in enumerate(rows):
            hidden[i, :r.shape[0]] = r.to(dtype)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return {"hidden_states": hidden.to(device), "attention_mask": mask.to(device), "lengths": lengths}

    def get_or_compute(self, pairs: Sequence[tuple[str, str]], device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None, show_progress: bool = False) -> dict[str, torch.Tensor]:
        """:meth:`get`, computing the missing pairs first (kept pending, written when a shard's worth is pending or
        on :meth:`flush`): the call for a training or scoring collator. Pair order and duplicates are kept."""
        pairs = [tuple(p) for p in pairs]
        self._compute(self.missing(pairs), show_progress)
        return self.get(pairs, device=device, dtype=dtype)

    def lengths(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Token counts of cached (or pending) pairs: what batching by length needs."""
        return np.array([self._length(pair_key(*p)) for p in pairs], dtype=np.int64)

    def _length(self, key: str) -> int:
        pending = self._pending.get(key)
        return int(pending.shape[0]) if pending is not None else self._index[key][2]


__all__ = ["PrefixCache", "pair_key", "shard_checksum", "CACHE_DTYPES", "CACHE_FORMAT"]
