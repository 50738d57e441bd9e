"""BM25 engines behind one interface: build or open an index, then search a batch of queries.

``bm25s`` is embedded (no Java) and configured to score like Lucene; ``pyserini`` is the real thing
(Anserini/Lucene) and is what published BM25 figures come from.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)
Run = dict[str, dict[str, float]]

# Lucene's EnglishAnalyzer stop set, i.e. what Anserini's default analyzer removes.
LUCENE_STOPWORDS = ("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
                    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
                    "this", "to", "was", "will", "with")
# Lucene's StandardTokenizer keeps 1-character tokens; bm25s' default pattern (\w\w+) drops them.
TOKEN_PATTERN = r"(?u)\b\w+\b"


def _check_params(k1: float, b: float) -> None:
    if not k1 >= 0:
        raise ValueError(f"option 'k1' must be >= 0, got {k1}")
    if not 0 <= b <= 1:
        raise ValueError(f"option 'b' must be in [0, 1], got {b}")


class Engine(abc.ABC):
    name: str

    def __init__(self, k1: float = 0.9, b: float = 0.4, threads: int | None = None):
        _check_params(k1, b)
        self.k1, self.b = float(k1), float(b)
        self.threads = threads or os.cpu_count() or 1

    @abc.abstractmethod
    def index_key(self) -> str:
        """Folder name of this engine's index; includes whatever the index bakes in."""

    @abc.abstractmethod
    def build_index(self, docs: Iterable[tuple[str, str]], index_dir: Path) -> int:
        """Index ``(docid, text)`` pairs into the empty folder ``index_dir``; return the number of docs."""

    @abc.abstractmethod
    def open_index(self, index_dir: Path) -> None: ...

    @abc.abstractmethod
    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Top-``k`` BM25 hits per query; only documents matching at least one query term."""

    def versions(self) -> dict[str, str]:
        return {}


class Bm25sEngine(Engine):
    """bm25s with Lucene's BM25 variant, Porter stemming (as Lucene's PorterStemFilter) and Lucene stopwords."""

    name = "bm25s"

    def __init__(self, k1: float = 0.9, b: float = 0.4, threads: int | None = None):
        super().__init__(k1, b, threads)
        self._model = None
        self._docids: list[str] = []

    def index_key(self) -> str:
        # bm25s precomputes the BM25 weights, so k1 and b are part of the index.
        return f"index-bm25s-k1_{self.k1:g}-b_{self.b:g}"

    def _tokenize(self, texts: list[str], return_ids: bool):
        import bm25s
        import Stemmer

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its logger to DEBUG on import

        return bm25s.tokenize(texts, lower=True, token_pattern=TOKEN_PATTERN, stopwords=list(LUCENE_STOPWORDS),
                              stemmer=Stemmer.Stemmer("porter"), return_ids=return_ids, show_progress=False)

    def build_index(self, docs: Iterable[tuple[str, str]], index_dir: Path) -> int:
        import bm25s

        docids, texts = [], []
        for docid, text in docs:
            docids.append(docid)
            texts.append(text)
        if not docids:
            raise ValueError("cannot index an empty corpus")
        model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        model.index(self._tokenize(texts, return_ids=True), show_progress=False)
        model.save(str(index_dir))
        (index_dir / "docids.json").write_text(json.dumps(docids))
        return len(docids)

    def open_index(self, index_dir: Path) -> None:
        import bm25s

        self._model = bm25s.BM25.load(str(index_dir))
        self._docids = json.loads((index_dir / "docids.json").read_text())

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        if self._model is None:
            raise RuntimeError("open_index() first")
        qids = list(queries)
        if not qids:
            return {}
        tokens = self._tokenize([queries[q] for q in qids], return_ids=False)
        depth = min(k, len(self._docids))
        idx, scores = self._model.retrieve(tokens, k=depth, n_threads=self.threads, show_progress=False)
        run: Run = {}
        for row, qid in enumerate(qids):
            # Lucene returns only documents that match a query term; bm25s pads with zero scores.
            run[qid] = {self._docids[d]: float(s) for d, s in zip(idx[row], scores[row]) if s > 0}
        return run

    def versions(self) -> dict[str, str]:
        import bm25s

        return {"bm25s": bm25s.__version__}


SEARCH_CHUNK = 1000  # queries per call into Pyserini's JVM


class PyseriniEngine(Engine):
    """Lucene BM25 through Pyserini/Anserini: prebuilt index when one can be fetched, else built here."""

    name = "pyserini"

    def __init__(self, k1: float = 0.9, b: float = 0.4, threads: int | None = None):
        super().__init__(k1, b, threads)
        from maw_reranker.retrieve.pyserini_env import lucene_searcher_class

        self._searcher_cls = lucene_searcher_class()  # fails early, with an install hint
        self._searcher = None

    def index_key(self) -> str:
        return "index-pyserini"  # a Lucene index stores statistics only; k1 and b are set at search time

    def build_index(self, docs: Iterable[tuple[str, str]], index_dir: Path) -> int:
        from maw_reranker.retrieve.pyserini_env import run_java

        # Anserini's JsonCollection ({"id", "contents"}), one shard per thread so indexing runs in parallel.
        with tempfile.TemporaryDirectory(prefix="maw-jsoncollection-", dir=index_dir.parent) as tmp:
            shards = [open(Path(tmp) / f"docs{i:02d}.jsonl", "w", encoding="utf-8") for i in range(self.threads)]
            count = 0
            try:
                for count, (docid, text) in enumerate(docs, 1):
                    shards[count % len(shards)].write(json.dumps({"id": docid, "contents": text}) + "\n")
            finally:
                for shard in shards:
                    shard.close()
            if count == 0:
                raise ValueError("cannot index an empty corpus")
            # In a child java: Ctrl-C stops it at once (a call into this process's JVM would finish first).
            run_java("io.anserini.index.IndexCollection",
                     ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
                      "-input", tmp, "-index", str(index_dir), "-threads", str(self.threads), "-quiet"],
                     f"indexing into {index_dir}")
        indexed = self._searcher_cls(str(index_dir)).num_docs
        if indexed != count:
            raise RuntimeError(f"Anserini indexed {indexed} of {count} documents into {index_dir}")
        return count

    def open_index(self, index_dir: Path) -> None:
        self._searcher = self._searcher_cls(str(index_dir))
        self._searcher.set_bm25(self.k1, self.b)

    def open_prebuilt(self, name: str) -> bool:
        """Use Pyserini's prebuilt index ``name`` (downloaded once to ~/.cache/pyserini); False when unavailable."""
        try:
            from pyserini.util import download_prebuilt_index

            index_dir = download_prebuilt_index(name, verbose=False)
        except Exception as exc:  # offline, mirror down, bad checksum: fall back to a local index
            from maw_reranker.utils.errors import network_reason

            log.warning("pyserini prebuilt index %s unavailable (%s); building an index locally (offline: "
                        "--no-prebuilt skips the download)", name, network_reason(exc))
            return False
        self.open_index(Path(index_dir))
        return True

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        if self._searcher is None:
            raise RuntimeError("open_index() first")
        qids = list(queries)
        if not qids:
            return {}
        hits = {}
        for start in range(0, len(qids), SEARCH_CHUNK):  # Ctrl-C is acted on between chunks (not inside Java)
            chunk = qids[start:start + SEARCH_CHUNK]
            hits.update(self._searcher.batch_search([queries[q] for q in chunk], chunk, k=k, threads=self.threads))
        return {qid: {h.docid: float(h.score) for h in hits.get(qid, [])} for qid in qids}

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"pyserini": version("pyserini")}


ENGINES = {"bm25s": Bm25sEngine, "pyserini": PyseriniEngine}


def resolve_engine_name(engine: str) -> str:
    """``auto`` means Pyserini when it can run here (the reference implementation), else bm25s."""
    if engine == "auto":
        from maw_reranker.retrieve.pyserini_env import pyserini_available

        return "pyserini" if pyserini_available()[0] else "bm25s"
    if engine not in ENGINES:
        raise ValueError(f"option 'engine': unknown engine {engine!r}; choose one of: auto, {', '.join(ENGINES)}")
    return engine


def get_engine(engine: str, k1: float = 0.9, b: float = 0.4, threads: int | None = None) -> Engine:
    return ENGINES[resolve_engine_name(engine)](k1=k1, b=b, threads=threads)
