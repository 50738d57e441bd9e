"""The offline demo: the whole research loop on the built-in synthetic collection, in a few minutes on a CPU.

1. generate the demo collection (BEIR layout) and a word-level tokenizer for it;
2. build BM25 pools (embedded bm25s engine) for its train and test queries;
3. train a tiny cross-encoder from random weights, without MAW and with learned MAW gating, per seed;
4. evaluate BM25, the non-MAW model, zero-shot MAW on it, and the trained MAW model on the test queries;
5. summarise over seeds with significance tests against the non-MAW model, and plot.

Everything goes through the same functions as the CLI commands (build_pool, train, run_suite).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

TINY = dict(hidden_size=64, num_layers=2, num_heads=4, initializer_range=0.05)
ZERO_SHOT = {"depth_dim": 4, "gating_mode": "stat", "maw_strength": 0.15}
LEARNED = {"depth_dim": 4, "gating_mode": "learned", "maw_strength": 0.5}


@dataclass
class DemoResult:
    output_dir: Path
    table: str
    bm25: dict
    summary_dir: Path | None
    seconds: float
    trained: dict = field(default_factory=dict)


def _train(model_dir: Path, collection: Path, out: Path, maw: dict | None, seed: int, steps: int) -> Path:
    from maw_reranker.train.config import TrainOptions
    from maw_reranker.train.trainer import train

    final = out / "final"
    if (final / "config.json").is_file():
        return final  # idempotent: a finished training is reused
    opts = TrainOptions(model=str(model_dir), maw=maw, dataset=str(collection), split="train", dataset_name="demo",
                        pools_dir=str(out.parent.parent / "pools"), pool_engine="bm25s", pool_k=100, num_negatives=7, batch_size=8,
                        # graded: grade-2 positives against grade-1 (same topic, other facet) and unjudged negatives
                        relevance_threshold=2, max_negative_grade=1,
                        max_steps=steps, lr=2e-3, maw_lr=1e-2, warmup_ratio=0.1, seed=seed, output_dir=str(out),
                        checkpoint_every=0, report_to=[], progress=False, force=True, max_length=64)
    return train(opts.validate()).final_model


def run_demo(output_dir: str | Path = "demo_output", seeds: tuple[int, ...] = (0, 1, 2), train_steps: int = 300,
             batch_size: int = 64, collection_size: dict | None = None) -> DemoResult:
    """Run the demo; ``collection_size`` overrides :func:`~maw_reranker.demo.collection.generate`'s sizes (tests)."""
    from maw_reranker.data import load_dataset, read_run
    from maw_reranker.demo.collection import generate, vocabulary
    from maw_reranker.evaluate.metrics import evaluate_run
    from maw_reranker.experiments.eval_run import EvalOptions
    from maw_reranker.experiments.suite import run_suite
    from maw_reranker.evaluate.summary import render_markdown
    from maw_reranker.retrieve import build_pool
    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

    start = time.perf_counter()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-checkpoint INFO lines would bury the demo's output
    out = Path(output_dir)
    collection = out / "collection"
    if not (collection / "corpus.jsonl").is_file():
        generate(collection, **(collection_size or {}))
    print(f"[1/5] demo collection (synthetic, not real data): {collection}")

    base = out / "models" / "tiny-random"
    if not (base / "config.json").is_file():
        save_tiny_cross_encoder(base, vocabulary(collection), seed=0, **TINY)
    pools = out / "pools"
    test = load_dataset(str(collection), split="test", name="demo")
    test_pool = build_pool(test, engine="bm25s", k=100, pools_dir=pools)
    build_pool(load_dataset(str(collection), split="train", name="demo"), engine="bm25s", k=100, pools_dir=pools)
    bm25 = evaluate_run(read_run(test_pool), test.qrels(), list(test.measures) + ["RR(rel=2)@10"]).aggregate
    print(f"[2/5] BM25 pools (bm25s): {test_pool}  nDCG@10={bm25['nDCG@10']:.4f}")

    trained: dict = {}
    for seed in seeds:
        for name, maw in (("non_maw", None), ("maw_learned", LEARNED)):
            run_dir = out / "models" / f"{name}-seed{seed}"
            trained[(name, seed)] = _train(base, collection, run_dir, maw, seed, train_steps)
    print(f"[3/5] trained tiny cross-encoders ({train_steps} steps each, seeds {list(seeds)}): {out / 'models'}")

    runs = []
    for seed in seeds:
        common = dict(dataset=str(collection), split="test", dataset_name="demo", candidates=str(test_pool),
                      output_dir=str(out / "experiments"), pools_dir=str(pools), seed=seed, batch_size=batch_size,
                      progress=False, standard_measures=False, extra_measures=["RR(rel=2)@10"])
        runs.append(EvalOptions(model=str(trained[("non_maw", seed)]), maw=None, variant="non_maw", **common))
        runs.append(EvalOptions(model=str(trained[("non_maw", seed)]), maw=dict(ZERO_SHOT), variant="maw_zeroshot_stat",
                                **common))
        runs.append(EvalOptions(model=str(trained[("maw_learned", seed)]), maw="auto", variant="maw_learned",
                                **common))
    suite = run_suite(runs, baseline="non_maw", name="demo", summary_measures=["nDCG@10", "RR(rel=2)@10"],
                      n_resamples=2000)
    print(f"[4/5] reranked the BM25 top-100 of {len(test.queries())} test queries: {out / 'experiments'}")

    summary_dir = next(iter(suite.summaries.values()), None)
    table = (summary_dir / "summary.md").read_text() if summary_dir and (summary_dir / "summary.md").is_file() else ""
    if not table and summary_dir is not None:
        import json

        table = render_markdown(json.loads((summary_dir / "summary.json").read_text()))
    seconds = time.perf_counter() - start
    print(f"[5/5] summary and plots: {summary_dir}")
    return DemoResult(out, table, bm25, summary_dir, seconds, {f"{k[0]}-seed{k[1]}": str(v) for k, v in trained.items()})


def report(result: DemoResult) -> str:
    lines = [
        "",
        "=" * 100,
        "maw-rerank demo: DEMO COLLECTION (synthetic text generated by the package, not a benchmark).",
        "The tiny cross-encoders start from random weights and train for about 15 s each on the collection's",
        "train queries; the numbers show the pipeline working, not MAW's merit on real data.",
        "=" * 100,
        f"BM25 (bm25s) first stage: " + ", ".join(f"{k}={v:.4f}" for k, v in result.bm25.items()),
        "",
        result.table.strip(),
        "",
        f"artifacts: {result.output_dir / 'experiments'} (per run: config, run file, per-query metrics, scores, depth log)",
        f"summary + plots: {result.summary_dir}",
        f"trained models: {result.output_dir / 'models'}",
        f"total time: {result.seconds:.0f} s",
        "",
        "Real data: see README 'Quick start (with internet and a GPU)', e.g.",
        "  maw-rerank build-pools --dataset trec-dl-2019-passage   # BM25 pools (Pyserini or bm25s)",
        "  maw-rerank suite --config main       # non_maw vs maw_default on MS MARCO dev, DL19, DL20, with significance",
        "  maw-rerank train --config scifact_maw --output-dir runs/sf-maw",
        "",
    ]
    return "\n".join(lines)
