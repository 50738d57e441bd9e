"""`maw-rerank datasets`: list the named datasets (ir_datasets ids, splits, metrics)."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import json
from dataclasses import dataclass, field
from typing import Literal

from maw_reranker.data.registry import list_datasets

HELP = "List the named datasets: ir_datasets ids per split, primary metrics, Pyserini prebuilt index."

LOCAL_HELP = """Local datasets (give a path as --dataset):
  BEIR folder            corpus.jsonl, queries.jsonl, qrels/<split>.tsv        (--split, default test)
  docs .tsv / .jsonl     + --queries FILE [--qrels TREC_QRELS] [--run TREC_RUN as candidates]
  candidates .json       RankLLM [{"query", "hits": [{"qid","docid","content","score"}]}] [--qrels FILE]"""


@dataclass
class Options:
    format: Literal["table", "json"] = field(default="table", metadata={"help": "output format"})


def run(options: Options) -> int:
    specs = list_datasets()
    if options.format == "json":
        print(json.dumps([{"name": s.name, "splits": s.splits, "default_split": s.default_split,
                           "measures": list(s.measures), "pyserini_index": s.pyserini_index,
                           "aliases": list(s.aliases), "description": s.description} for s in specs], indent=2))
        return 0
    rows = [("name", "split", "ir_datasets id", "measures", "pyserini prebuilt")]
    for s in specs:
        for i, (split, irds_id) in enumerate(s.splits.items()):
            default = " (default)" if i == 0 and len(s.splits) > 1 else ""
            rows.append((s.name if i == 0 else "", split + default, irds_id,
                         ", ".join(s.measures) if i == 0 else "", (s.pyserini_index or "-") if i == 0 else ""))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print(LOCAL_HELP)
    return 0
