"""The built-in demo collection: a small synthetic test collection generated from a seed, in BEIR layout.

Not real data. It exists so that the whole pipeline (pools, reranking, training, statistics) runs offline in
minutes. Each topic has its own vocabulary and a few facets; a query names a topic and a facet. Documents about
the topic and the facet are relevant (grade 2), other documents about the topic are partially relevant (grade 1),
and distractors from other topics repeat the facet words, so that term matching alone (BM25) is misled and a
reranker that learns word interactions can do better.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from maw_reranker.utils.io import atomic_write

SYLLABLES = ["ka", "lo", "mi", "ter", "van", "su", "rel", "dop", "qui", "ne", "bar", "tis", "gor", "pha", "lin",
             "mur", "ze", "cor", "pel", "dra", "fo", "nix", "sal", "vet", "hum", "ari", "bel", "tok"]
COMMON = ("the of and a in to is for on with as by this that from are study results method data model "
          "analysis effect using based new".split())


def _word(rng: random.Random, used: set) -> str:
    while True:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
        if word not in used:
            used.add(word)
            return word


def generate(output_dir: str | Path, n_topics: int = 24, facets: int = 3, docs_per_facet: int = 4,
             topic_only_docs: int = 4, distractors: int = 4, queries_per_need: int = 8, seed: int = 13) -> Path:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{train,test}.tsv`` under ``output_dir``."""
    rng = random.Random(seed)
    used: set = set(COMMON)
    output_dir = Path(output_dir)
    topics = []
    for t in range(n_topics):
        topic_words = [_word(rng, used) for _ in range(6)]
        facet_words = [[_word(rng, used) for _ in range(3)] for _ in range(facets)]
        topics.append((topic_words, facet_words))

    docs: list[dict] = []
    queries: list[dict] = []
    qrels: dict[str, dict[str, int]] = {}
    splits: dict[str, list[int]] = {"train": [], "test": []}

    def sentence(words: list[str], n: int) -> str:
        return " ".join(rng.choice(words) if rng.random() < 0.55 else rng.choice(COMMON) for _ in range(n))

    def add_doc(title_words: list[str], body_words: list[str]) -> str:
        doc_id = f"d{len(docs):04d}"
        docs.append({"_id": doc_id, "title": " ".join(rng.sample(title_words, 2)),
                     "text": sentence(body_words, rng.randint(18, 34))})
        return doc_id

    facet_docs: dict[tuple[int, int], list[str]] = {}
    topic_docs: dict[int, list[str]] = {}
    for t, (topic_words, facet_words) in enumerate(topics):
        for f, fw in enumerate(facet_words):
            facet_docs[(t, f)] = [add_doc(topic_words, topic_words * 2 + fw) for _ in range(docs_per_facet)]
        topic_docs[t] = [add_doc(topic_words, topic_words) for _ in range(topic_only_docs)]
    for t, (topic_words, facet_words) in enumerate(topics):
        for f, fw in enumerate(facet_words):
            # Distractors: another topic's text stuffed with this facet's words (high term overlap, not relevant).
            for _ in range(distractors):
                other = topics[(t + rng.randint(1, n_topics - 1)) % n_topics][0]
                add_doc(other + fw, other + fw * 4)
            # Everything about the topic is partially relevant; the documents on the query's facet are relevant.
            judged = {d: 1 for d in topic_docs[t]}
            judged.update({d: 1 for g in range(facets) for d in facet_docs[(t, g)]})
            judged.update({d: 2 for d in facet_docs[(t, f)]})
            # Several differently worded queries per need: the first is a test query, the rest train queries.
            combos = [(a, b) for a in range(len(topic_words)) for b in range(a + 1, len(topic_words))]
            for i, (a, b) in enumerate(rng.sample(combos, queries_per_need)):
                qid = f"q{len(queries):04d}"
                words = [topic_words[a], topic_words[b]] + rng.sample(fw, 2)
                queries.append({"_id": qid, "text": " ".join(words)})
                qrels[qid] = judged
                splits["test" if i == 0 else "train"].append(len(queries) - 1)

    with atomic_write(output_dir / "corpus.jsonl") as handle:
        for doc in docs:
            handle.write(json.dumps(doc) + "\n")
    with atomic_write(output_dir / "queries.jsonl") as handle:
        for query in queries:
            handle.write(json.dumps(query) + "\n")
    for split, idx in splits.items():
        with atomic_write(output_dir / "qrels" / f"{split}.tsv") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for i in idx:
                qid = queries[i]["_id"]
                for doc_id, grade in sorted(qrels[qid].items()):
                    handle.write(f"{qid}\t{doc_id}\t{grade}\n")
    (output_dir / "README.txt").write_text(
        "Synthetic demo collection generated by maw_reranker.demo.collection (seed %d). Not real data.\n" % seed)
    return output_dir


def vocabulary(collection_dir: str | Path) -> list[str]:
    """Every word of the collection (for the demo's word-level tokenizer)."""
    words: list[str] = list(COMMON)
    seen = set(words)
    for name in ("corpus.jsonl", "queries.jsonl"):
        for line in (Path(collection_dir) / name).read_text().splitlines():
            row = json.loads(line)
            for field in ("title", "text"):
                for word in row.get(field, "").split():
                    if word not in seen:
                        seen.add(word)
                        words.append(word)
    return words
