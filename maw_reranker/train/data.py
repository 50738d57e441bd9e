"""Training groups (one positive, n hard negatives): sampling, streaming, batching, collation.

A group source yields :class:`Group` ids (never texts) for an epoch, as a pure function of ``(seed, epoch)``:
the position in the data is just ``(epoch, groups consumed)``, so a resumed run regenerates the epoch and skips
what was consumed (cheap: ids only) instead of pickling iterator state. Texts are fetched per batch from the lazy
docs mapping, so nothing corpus-sized is ever held in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from maw_reranker.data.dataset import fetch_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    qid: str
    pos: str
    negs: tuple[str, ...]
    teacher: Optional[tuple[float, ...]] = None  # teacher scores of (pos, *negs) when the source carries them


def rank_candidates(hits: Mapping[str, float]) -> list[str]:
    """Docids best first by score; ties keep the file's order (MS MARCO's train top-1000 has no scores at all)."""
    return [d for d, _ in sorted(hits.items(), key=lambda kv: -kv[1])]


def positives_of(judged: Mapping[str, int], threshold: int) -> list[str]:
    return sorted(d for d, g in judged.items() if g >= threshold)


def negative_window(ranked: Sequence[str], judged: Mapping[str, int], rank_min: int, rank_max: int,
                    max_grade: int = 0) -> list[str]:
    """Candidates at 1-based ranks ``[rank_min, rank_max]`` of the pool whose grade is at most ``max_grade``
    (default 0: every judged-relevant doc is excluded; graded training lets lower grades be negatives)."""
    return [d for d in ranked[rank_min - 1:rank_max] if judged.get(d, 0) <= max_grade]


def sample_negatives(window: Sequence[str], n: int, how: str, rng: np.random.Generator) -> tuple[str, ...]:
    """``n`` negatives from ``window``: uniform without replacement (``random``) or the best ranked (``top``).

    A window shorter than ``n`` is used whole and topped up by sampling it again with replacement, so every group
    has the same size (batched scores are a ``[groups, 1 + n]`` tensor).
    """
    if not window:
        raise ValueError("empty negative window")
    if how == "top":
        picked = list(window[:n])
    elif how == "random":
        idx = rng.choice(len(window), size=min(n, len(window)), replace=False)
        picked = [window[i] for i in idx]
    else:
        raise ValueError(f"unknown negative sampling {how!r}; allowed: random, top")
    if len(picked) < n:
        extra = rng.integers(0, len(window), size=n - len(picked))
        picked += [window[i] for i in extra]
    return tuple(picked)


class PoolGroups:
    """In-memory source: one group per (query, positive) per epoch, in a fresh order with fresh negatives.

    ``windows`` maps qid -> its negative window (already filtered); built by :mod:`maw_reranker.train.sources`.
    """

    streaming = False

    def __init__(self, positives: Mapping[str, list[str]], windows: Mapping[str, list[str]], num_negatives: int,
                 sampling: str = "random", seed: int = 0):
        self.items = sorted((q, p) for q, ps in positives.items() if windows.get(q) for p in ps)
        self.windows = dict(windows)
        self.num_negatives = num_negatives
        self.sampling = sampling
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """Every (qid, docid) a group of any epoch may hold: the positives and their queries' negative windows."""
        positives: dict[str, list[str]] = {}
        for qid, pos in self.items:
            positives.setdefault(qid, []).append(pos)
        for qid, pos in positives.items():
            for docid in dict.fromkeys([*pos, *self.windows[qid]]):
                yield qid, docid

    def iter_epoch(self, epoch: int) -> Iterator[Group]:
        rng = np.random.default_rng([self.seed, epoch])
        for i in rng.permutation(len(self.items)):
            qid, pos = self.items[i]
            yield Group(qid, pos, sample_negatives(self.windows[qid], self.num_negatives, self.sampling, rng))


def shuffle_stream(items: Iterable, buffer: int, rng: np.random.Generator) -> Iterator:
    """Bounded-memory shuffle: hold ``buffer`` items, emit a random one as each new item arrives."""
    held: list = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        i = int(rng.integers(len(held)))
        held[i], item = item, held[i]
        yield item
    for i in rng.permutation(len(held)):
        yield held[i]


def consecutive_runs(rows: Iterable[tuple[str, str, float]]) -> Iterator[tuple[str, dict[str, float]]]:
    """Group a (qid, docid, score) stream by consecutive qid; a run file is written one query at a time."""
    current, hits = None, {}
    for qid, docid, score in rows:
        if qid != current:
            if current is not None:
                yield current, hits
            current, hits = qid, {}
        hits[docid] = float(score)
    if current is not None:
        yield current, hits


class StreamingPoolGroups:
    """Streaming source over a candidate stream grouped by query (a TREC run or ir_datasets scoreddocs).

    Only the qrels (small even for MS MARCO) are in memory; candidates are read once per epoch and groups pass
    through a bounded shuffle buffer seeded by ``(seed, epoch)``.
    """

    streaming = True

    def __init__(self, rows: Callable[[], Iterable[tuple[str, str, float]]], qrels: Mapping[str, Mapping[str, int]],
                 num_negatives: int, rank_min: int, rank_max: int, threshold: int, sampling: str = "random",
                 seed: int = 0, buffer: int = 10000, include: Optional[set] = None, max_negative_grade: int = 0):
        self.rows, self.qrels, self.num_negatives = rows, qrels, num_negatives
        self.max_negative_grade = max_negative_grade
        self.rank_min, self.rank_max, self.threshold = rank_min, rank_max, threshold
        self.sampling, self.seed, self.buffer, self.include = sampling, seed, buffer, include

    def __len__(self) -> int:  # unknown without a full pass; the trainer requires max_steps
        raise TypeError("a streaming source has no length")

    def iter_epoch(self, epoch: int) -> Iterator[Group]:
        rng = np.random.default_rng([self.seed, epoch])

        def groups():
            for qid, hits in consecutive_runs(self.rows()):
                if self.include is not None and qid not in self.include:
                    continue
                judged = self.qrels.get(qid, {})
                positives = positives_of(judged, self.threshold)
                window = negative_window(rank_candidates(hits), judged, self.rank_min, self.rank_max,
                                         self.max_negative_grade)
                if not positives or not window:
                    continue
                for pos in positives:
                    yield Group(qid, pos, sample_negatives(window, self.num_negatives, self.sampling, rng))

        return shuffle_stream(groups(), self.buffer, rng)


class TripleGroups:
    """Streaming source over official (query, positive, negative) docpairs, e.g. ``msmarco-passage/train/triples-small``.

    A negative that the qrels judge relevant is dropped (the official triples contain a few), keeping the rule that
    a judged-relevant document is never a negative.
    """

    streaming = True

    def __init__(self, docpairs: Callable[[], Iterable], qrels: Mapping[str, Mapping[str, int]], seed: int = 0,
                 buffer: int = 10000):
        self.docpairs, self.qrels, self.seed, self.buffer = docpairs, qrels, seed, buffer

    def __len__(self) -> int:
        raise TypeError("a streaming source has no length")

    def iter_epoch(self, epoch: int) -> Iterator[Group]:
        rng = np.random.default_rng([self.seed, epoch])

        def groups():
            for pair in self.docpairs():
                qid, pos, neg = pair.query_id, pair.doc_id_a, pair.doc_id_b
                if self.qrels.get(qid, {}).get(neg, 0) > 0:
                    continue
                yield Group(qid, pos, (neg,))

        return shuffle_stream(groups(), self.buffer, rng)


@dataclass
class DataPosition:
    """Where the data stream is: epoch and global groups consumed in it (saved in checkpoints)."""

    epoch: int = 0
    offset: int = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def iter_batches(source, global_batch: int, position: DataPosition) -> Iterator[list[Group]]:
    """Endless global batches from ``position`` on, advancing it as batches are taken.

    The last incomplete batch of an epoch is dropped: every process must get the same number of equally shaped
    batches. Resuming regenerates the epoch and skips ``position.offset`` groups (ids only, no texts).
    """
    while True:
        stream = source.iter_epoch(position.epoch)
        for _ in range(position.offset):
            if next(stream, None) is None:
                break
        produced = False
        while True:
            batch = []
            for group in stream:
                batch.append(group)
                if len(batch) == global_batch:
                    break
            if len(batch) < global_batch:
                break
            produced = True
            position.offset += global_batch
            yield batch
        if not produced and position.offset == 0:
            raise ValueError(f"epoch {position.epoch} produced fewer groups than one global batch ({global_batch}); "
                             "lower batch_size or add training data")
        position.epoch += 1
        position.offset = 0


class GroupCollator:
    """Turns groups into model inputs: ``pairs = [(q, pos), (q, neg_1), ..., (q, neg_n)]`` per group, group-major."""

    def __init__(self, tokenize: Callable, queries: Mapping[str, str], docs: Mapping[str, str]):
        self.tokenize, self.queries, self.docs = tokenize, queries, docs

    def texts(self, docids: Sequence[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(docids))
        found = fetch_texts(self.docs, wanted)
        missing = [d for d in wanted if d not in found]
        if missing:
            raise KeyError(f"training documents missing from the corpus: {missing[:10]}")
        return found

    def pairs(self, groups: Sequence[Group]) -> list[tuple[str, str]]:
        texts = self.texts([d for g in groups for d in (g.pos, *g.negs)])
        missing = [g.qid for g in groups if g.qid not in self.queries]
        if missing:
            raise KeyError(f"training queries without query text: {list(dict.fromkeys(missing))[:10]}")
        return [(self.queries[g.qid], texts[d]) for g in groups for d in (g.pos, *g.negs)]

    def __call__(self, groups: Sequence[Group]) -> dict:
        return dict(self.tokenize(self.pairs(groups)))
