"""Tiny collections written by the tests (BEIR folder, TSV layout, RankLLM candidates JSON)."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = {
    "d1": ("Cats", "The cat sat on the mat. Cats are small domesticated felines kept as pets."),
    "d2": ("Markets", "Stock markets fell sharply as investors sold bank shares after the report."),
    "d3": ("Photosynthesis", "Plants convert sunlight, water and carbon dioxide into chemical energy."),
    "d4": ("Python", "The Python programming language emphasizes readable code and simple syntax."),
    "d5": ("Volcanoes", "Volcanic eruptions eject lava, ash and hot gases into the atmosphere."),
    "d6": ("Deep learning", "Neural networks learn representations by gradient descent on large data."),
}
QUERIES = {
    "q1": "domesticated cats kept as pets",
    "q2": "why did investors sell bank shares",
    "q3": "how do plants use sunlight",
    "q4": "readable programming language",
    "q5": "lava and ash",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 2}, "q3": {"d3": 1}, "q4": {"d4": 1}, "q5": {"d5": 1, "d6": 0}}
EXPECTED_TOP = {"q1": "d1", "q2": "d2", "q3": "d3", "q4": "d4", "q5": "d5"}


def write_beir(folder: Path, train_qrels: bool = False) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for docid, (title, text) in DOCS.items():
            f.write(json.dumps({"_id": docid, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, text in {**QUERIES, "q-train": "an unjudged training query about cats"}.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, docs in QRELS.items() for d, g in docs.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    if train_qrels:
        (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq-train\td1\t1\n")
    return folder


def write_tsv_layout(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"docs": folder / "docs.tsv", "queries": folder / "queries.tsv", "qrels": folder / "qrels.txt",
             "run": folder / "run.trec"}
    paths["docs"].write_text("".join(f"{d}\t{title}\t{text}\n" for d, (title, text) in DOCS.items()))
    paths["queries"].write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()))
    paths["qrels"].write_text("".join(f"{q} 0 {d} {g}\n" for q, docs in QRELS.items() for d, g in docs.items()))
    paths["run"].write_text("q1 Q0 d2 1 3.5 bm25\nq1 Q0 d1 2 2.0 bm25\nq2 Q0 d2 1 9.0 bm25\n")
    return paths


def write_candidates_json(path: Path) -> Path:
    entries = []
    for qid, query in list(QUERIES.items())[:3]:
        hits = [{"qid": qid, "docid": d, "content": f"{DOCS[d][0]} {DOCS[d][1]}", "rank": r, "score": 10.0 - r}
                for r, d in enumerate(["d1", "d2", "d3"], 1)]
        entries.append({"query": query, "hits": hits})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def write_parquet(path, rows):
    """Rows (dicts) as a parquet file, through Hugging Face datasets."""
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
