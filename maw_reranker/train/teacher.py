"""Teacher scores for the distillation losses (``margin_mse``, ``listwise_kl``): where they come from, the on-disk
cache of a teacher model's scores, and the ``[groups, 1 + n]`` tensor of a batch.

Three sources, exactly one at a time (checked in :meth:`TrainOptions.validate`, and against the columns an hf
source has in ``train/hf_source.py``: a teacher option with score columns is an error naming both):

* ``teacher_run``: a TREC run; its score column is the teacher's score of ``(qid, docid)``.
* a score column of an ``hf`` source (``train/hf_source.py``): the groups carry their scores.
* ``teacher_model``: a cross-encoder run once, before training, over every pair a group may hold (the source's
  ``pairs()``), through the one scoring loop (``evaluate.rerank.score_pairs``) at ``precision``; scores are cached
  on disk by :class:`TeacherCache`, one folder per teacher and precision, so a second run (another seed, another
  student) scores nothing.

Every pair of an in-memory source is checked before the student is loaded; a streamed pair without a teacher score
stops training at the batch that holds it, naming the pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from maw_reranker.train.losses import DISTILLATION_LOSSES
from maw_reranker.utils.io import atomic_write, write_json
from maw_reranker.utils.progress import progress_bar
from maw_reranker.utils.text import preview

log = logging.getLogger(__name__)
CACHE_FORMAT = "maw-teacher-scores/1"
PRECISIONS = ("fp32", "bf16", "fp16")
KEY_BYTES = 16
CHUNK_PAIRS = 4096  # pairs per cache shard: a killed fill loses at most this many scores


class TeacherScoreError(ValueError):
    """A training pair has no teacher score; the message names the pair and where scores were looked up."""


class TeacherScores:
    """The teacher's score of each training pair: ``scores[qid][docid]``, or a group's own ``teacher`` scores
    (an hf source's score columns). ``origin`` names the source in errors."""

    def __init__(self, scores: Mapping[str, Mapping[str, float]], origin: str, info: Optional[dict] = None):
        self.scores, self.origin, self.info = scores, origin, dict(info or {})

    def missing(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(q, d) for q, d in pairs if d not in self.scores.get(q, {})]

    def group_scores(self, groups: Sequence) -> torch.Tensor:
        """``[len(groups), 1 + n]`` float32 teacher scores of ``(pos, *negs)`` of each group."""
        rows = []
        for group in groups:
            if group.teacher is not None:
                rows.append(group.teacher)
                continue
            judged = self.scores.get(group.qid, {})
            row = []
            for docid in (group.pos, *group.negs):
                score = judged.get(docid)
                if score is None:
                    raise TeacherScoreError(f"no teacher score for query {group.qid!r}, document {docid!r} in "
                                            f"{self.origin}")
                row.append(score)
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float32)


# -- the teacher model's cache ------------------------------------------------------------------------------------
def pair_key(query: str, document: str) -> bytes:
    """The cache key of a pair: a 16-byte BLAKE2b digest of its exact text (a JSON list, not a concatenation)."""
    return hashlib.blake2b(json.dumps([query, document], ensure_ascii=False).encode("utf-8"),
                           digest_size=KEY_BYTES).digest()


def teacher_fingerprint(encoder, precision: str = "fp32") -> str:
    """sha256 of everything a teacher's score of a pair depends on besides the text: the model config, every
    parameter and buffer, the tokenizer, the MAW config, ``max_length`` and the scoring ``precision`` (fp32, bf16,
    fp16: bf16 and fp32 scores of one model differ, and never mix). Hashing the weights (not the name) means a
    re-download or a fine-tuned copy under the same path never reuses stale scores."""
    from maw_reranker.cross_encoder.fingerprint import config_entries, fingerprint

    _check_precision(precision)
    model = encoder.model
    maw = getattr(encoder, "maw_config", None)
    head = {"format": CACHE_FORMAT, "config": config_entries(model.config), "max_length": encoder.max_length,
            "maw": maw.to_dict() if maw is not None else None, "precision": precision}
    return fingerprint(head, encoder.tokenizer, model.state_dict().items())


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"option 'precision': teacher scores are computed in {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")


class TeacherCache:
    """Teacher scores of (query, document) texts on disk, one folder per teacher and scoring precision::

        <root>/<model_type>-L<max_length>-<precision>-<fingerprint[:16]>/
            meta.json                         # the teacher it belongs to (checked on open)
            scores-<ns>-<pid>-<rand>.npz      # keys [n, 16] (uint8 pair digests) and scores [n] float32

    Shards are written with :func:`maw_reranker.utils.io.atomic_write` as each chunk of ``CHUNK_PAIRS`` pairs is
    scored, so a killed fill keeps every complete shard and the next one scores only what is missing; names are
    unique per writer, so processes never overwrite each other's shards.
    """

    def __init__(self, root: str | os.PathLike, encoder, *, precision: str = "fp32",
                 fingerprint: Optional[str] = None):
        _check_precision(precision)
        self.encoder, self.precision = encoder, precision
        digest = fingerprint or teacher_fingerprint(encoder, precision)
        model_type = getattr(encoder.model.config, "model_type", "model")
        self.path = Path(root) / f"{model_type}-L{encoder.max_length}-{precision}-{digest[:16]}"
        self.path.mkdir(parents=True, exist_ok=True)
        meta_file = self.path / "meta.json"
        meta = {"format": CACHE_FORMAT, "fingerprint": digest, "max_length": encoder.max_length,
                "precision": precision, "model": str(getattr(encoder.model.config, "_name_or_path", ""))}
        if meta_file.is_file():
            found = json.loads(meta_file.read_text(encoding="utf-8"))
            if found.get("format") != CACHE_FORMAT or found.get("fingerprint") != digest:
                raise ValueError(f"option 'teacher_cache': {self.path} holds scores of another teacher "
                                 f"({found.get('model')!r}); remove the folder or use another teacher_cache")
        else:
            write_json(meta_file, meta)
        self.scores: dict[bytes, float] = {}
        for shard in sorted(self.path.glob("scores-*.npz")):
            with np.load(shard) as data:
                raw = data["keys"].tobytes()  # [n, 16] uint8: fixed-width bytes would drop trailing zero bytes
                keys = [raw[i:i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]
                self.scores.update(zip(keys, data["scores"].tolist()))
        self.scored = 0  # pairs this object scored (the rest came from the cache)

    def __len__(self) -> int:
        return len(self.scores)

    def _write_shard(self, keys: list[bytes], values: np.ndarray) -> None:
        name = f"scores-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}.npz"
        with atomic_write(self.path / name, "wb") as handle:
            np.savez(handle, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES),
                     scores=np.asarray(values, dtype=np.float32))

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 64, precision: Optional[str] = None,
              show_progress: bool = False) -> np.ndarray:
        """Teacher scores of ``pairs`` (texts), in order: cached ones read, the rest scored (at the cache's
        precision) and cached. ``precision``, when given, must be the cache's."""
        from maw_reranker.evaluate.rerank import score_pairs

        if precision is not None and precision != self.precision:
            raise ValueError(f"teacher cache {self.path} holds {self.precision} scores; {precision} scores go to "
                             f"their own folder (TeacherCache(..., precision={precision!r}))")
        precision = self.precision
        keys = [pair_key(q, d) for q, d in pairs]
        todo, seen = [], set()
        for i, key in enumerate(keys):
            if key not in self.scores and key not in seen:
                seen.add(key)
                todo.append(i)
        bar = progress_bar(len(todo), show_progress and bool(todo), "teacher scores")
        try:
            for start in range(0, len(todo), CHUNK_PAIRS):
                idx = todo[start:start + CHUNK_PAIRS]
                values = score_pairs(self.encoder, [pairs[i] for i in idx], batch_size=batch_size,
                                     precision=precision)
                chunk_keys = [keys[i] for i in idx]
                self._write_shard(chunk_keys, values)
                self.scores.update(zip(chunk_keys, values.tolist()))
                self.scored += len(idx)
                bar.update(len(idx))
        finally:
            bar.close()
        return np.array([self.scores[k] for k in keys], dtype=np.float32)


# -- from options ----------------------------------------------------------------------------------------------------
def _source_pairs(data, option: str) -> list[tuple[str, str]]:
    pairs = getattr(data.source, "pairs", None)
    if pairs is None:
        raise ValueError(f"option '{option}' needs every training pair before training, which a streamed source "
                         "cannot list; use streaming: false")
    return list(pairs())


def _from_run(opts, data) -> TeacherScores:
    from maw_reranker.data.trec import read_run
    from maw_reranker.train.sources import TrainingDataError

    run = read_run(opts.teacher_run)
    teacher = TeacherScores(run, f"teacher_run {opts.teacher_run}", {"source": "teacher_run",
                                                                      "path": str(opts.teacher_run)})
    if hasattr(data.source, "pairs"):  # in memory: check every pair now, before the student is loaded
        missing = teacher.missing(data.source.pairs())
        if missing:
            raise TrainingDataError(f"{len(missing)} training pairs have no teacher score in teacher_run "
                                    f"{opts.teacher_run}, as query/doc: {preview(f'{q}/{d}' for q, d in missing)}; "
                                    "score them into the run (or use teacher_model)")
    return teacher


def _from_model(opts, data, device, show_progress: bool) -> TeacherScores:
    from maw_reranker.config.sections import resolve_model_path
    from maw_reranker.cross_encoder.checks import check_model_dir
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.data.dataset import fetch_texts
    from maw_reranker.train.sources import TrainingDataError

    pairs = _source_pairs(data, "teacher_model")
    texts = fetch_texts(data.docs, (d for _, d in pairs))
    absent = sorted({d for _, d in pairs if d not in texts})
    if absent:
        raise TrainingDataError(f"{len(absent)} training documents are missing from the corpus: {preview(absent)}")
    path = resolve_model_path(opts.teacher_model)
    check_model_dir(path, opts.teacher_max_length, option="teacher_model")
    teacher = CrossEncoderWithMAW.from_pretrained(path, max_length=opts.teacher_max_length, device=device)
    cache = TeacherCache(opts.teacher_cache, teacher, precision=opts.precision)
    before = len(cache)
    values = cache.score([(data.queries[q], texts[d]) for q, d in pairs], opts.teacher_batch_size,
                         show_progress=show_progress)
    scores: dict[str, dict[str, float]] = {}
    for (qid, docid), value in zip(pairs, values.tolist()):
        scores.setdefault(qid, {})[docid] = value
    info = {"source": "teacher_model", "model": str(opts.teacher_model), "max_length": teacher.max_length,
            "precision": opts.precision, "cache": str(cache.path), "pairs": len(pairs), "scored": cache.scored,
            "cached_before": before}
    log.info("teacher %s: %d pairs, %d scored now, %d from the cache %s", opts.teacher_model, len(pairs),
             cache.scored, len(pairs) - cache.scored, cache.path)
    del teacher, cache
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return TeacherScores(scores, f"teacher_model {opts.teacher_model}", info)


def load_teacher(opts, data, device=None, main_first=None, show_progress: bool = False) -> Optional[TeacherScores]:
    """The teacher scores the options ask for (None for a loss without a teacher): from ``teacher_run``, from
    ``teacher_model``, or ``data.teacher`` (an hf source's score columns). Exactly one of them: a teacher option
    with score columns is refused (``train/hf_source.py`` names both; here again, for data built elsewhere). Under
    several processes the main process fills the model cache first (``main_first``) and the others then read it."""
    import contextlib

    from maw_reranker.train.sources import TrainingDataError

    if opts.loss not in DISTILLATION_LOSSES:
        return None
    teacher_option = "teacher_run" if opts.teacher_run else "teacher_model" if opts.teacher_model else None
    if teacher_option and data.teacher is not None:
        raise TrainingDataError(f"option '{teacher_option}' and the {data.teacher.origin} both give teacher scores; "
                                f"teacher scores come from exactly one place: leave out {teacher_option} to train on "
                                "the columns, or use data without score columns")
    if opts.teacher_run:
        return _from_run(opts, data)
    if opts.teacher_model:
        with (main_first or contextlib.nullcontext)():
            return _from_model(opts, data, device, show_progress)
    if data.teacher is None:
        raise TrainingDataError(f"loss {opts.loss!r} needs teacher scores, and the training data has none: set "
                                "teacher_run (a TREC run with scores), teacher_model (a cross-encoder, scored once and "
                                "cached), or give the hf source a score column (hf_columns: scores / score / "
                                "positive_score + negative_scores)")
    return data.teacher
