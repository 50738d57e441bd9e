"""A tiny learnable reranking task (BEIR folder + TREC run of candidates) and a tiny cross-encoder, built locally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOPICS = ["apple", "river", "engine", "violin", "planet", "forest", "castle", "ocean", "desert", "garden",
          "robot", "candle", "bridge", "tiger", "winter", "copper"]
FILLER = ["the", "a", "of", "and", "is", "with", "about", "some", "many", "story"]
WORDS = TOPICS + FILLER + [f"{t}s" for t in TOPICS]


def write_task(folder: Path, n_queries: int = 12, docs_per_topic: int = 3, seed: int = 0,
               missing_doc: str | None = None, no_positive: bool = False) -> dict[str, Path]:
    """Queries name a topic; the relevant doc is the one about that topic; candidates are every doc.

    ``missing_doc``: a docid added to the run but not to the corpus. ``no_positive``: qrels hold only grade 0.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    docs, queries, qrels = {}, {}, []
    for t, topic in enumerate(TOPICS):
        for k in range(docs_per_topic):
            filler = " ".join(rng.choice(FILLER, size=4))
            docs[f"d{t}_{k}"] = f"{topic} {filler} {topic}s" if k == 0 else f"{filler} {TOPICS[(t + k) % len(TOPICS)]}"
    for q in range(n_queries):
        topic = TOPICS[q % len(TOPICS)]
        queries[f"q{q}"] = f"{topic} story"
        qrels.append((f"q{q}", f"d{q % len(TOPICS)}_0", 0 if no_positive else 1))
    with (folder / "corpus.jsonl").open("w") as f:
        for docid, text in docs.items():
            f.write(json.dumps({"_id": docid, "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, d, g in qrels]
    (folder / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    run_lines = []
    for qid in queries:
        ids = list(docs) + ([missing_doc] if missing_doc else [])
        order = rng.permutation(len(ids))
        run_lines += [f"{qid} Q0 {ids[i]} {r + 1} {100.0 - r} test" for r, i in enumerate(order)]
    run = folder / "candidates.run"
    run.write_text("\n".join(run_lines) + "\n")
    return {"dataset": folder, "run": run}


def tiny_model_dir(folder: Path, seed: int = 0) -> Path:
    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

    return save_tiny_cross_encoder(folder, WORDS, seed=seed)


def options(tmp: Path, task: dict, model: Path, **overrides):
    from maw_reranker.train.config import TrainOptions

    base = dict(model=str(model), dataset=str(task["dataset"]), split="train", candidates=str(task["run"]),
                output_dir=str(tmp / "out"), num_negatives=3, neg_rank_max=1000, batch_size=4, max_steps=6,
                lr=5e-3, maw_lr=5e-2, warmup_ratio=0.0, checkpoint_every=0, report_to=[], progress=False,
                max_length=32, seed=0)
    base.update(overrides)
    return TrainOptions(**base)
