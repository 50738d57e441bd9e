"""Real checks of `maw-rerank train` on SciFact (issue #5), CPU-sized.

1. Quality: fine-tune ms-marco-MiniLM-L-12-v2 on SciFact train (BM25 negatives) without MAW and with MAW (a learned
   gating mode), same budget, several seeds; SciFact test nDCG@10 of zero-shot vs both, with the suite's paired
   significance columns (summarize/render_markdown), against zero-shot and MAW against non-MAW.
2. Throughput: pairs/s of `maw-rerank train` (the Trainer) vs sentence-transformers' CrossEncoderTrainer on the same
   model, pairs, batch size (in pairs), max_length and precision (fp32), interleaved rounds in one process.

Model: cross-encoder/ms-marco-MiniLM-L-12-v2 (or --model, a hub id or folder); data: the local BEIR copy
$MAW_DATA/scifact (default ../shared/data; or --data). Our offline set-up (benchmarks/offline_setup.py): hub ids
resolve from the Hugging Face cache with HF_HUB_OFFLINE=1, seeded by bash ../shared/tools/seed-hf-cache.sh.

Usage (records in docs/training.md):
    python benchmarks/bench_train_scifact.py
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from offline_setup import CROSS_ENCODER, data_root  # noqa: E402  (first: sets HF_HUB_OFFLINE before transformers)

SCIFACT = (data_root() / "scifact").resolve()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=CROSS_ENCODER, help=f"hub id or folder (default: {CROSS_ENCODER})")
    p.add_argument("--data", default=str(SCIFACT), help="local BEIR SciFact folder (default: $MAW_DATA/scifact)")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "bench_train_scifact"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per fine-tuning run")
    p.add_argument("--batch-groups", type=int, default=2, help="groups per step")
    p.add_argument("--negatives", type=int, default=3, help="negatives per group")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--maw-mode", default="learned")
    p.add_argument("--maw-lr", type=float, default=1e-2)
    p.add_argument("--test-queries", type=int, default=100, help="SciFact test queries (first N by id; 300 = all)")
    p.add_argument("--depth", type=int, default=10, help="BM25 candidates reranked per test query")
    p.add_argument("--tp-rounds", type=int, default=5)
    p.add_argument("--tp-steps", type=int, default=8, help="steps per throughput round (the first is warm-up)")
    p.add_argument("--tp-batch-groups", type=int, default=2)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    return p.parse_args(argv)


def train_options(args, out: Path, seed: int, maw, **overrides):
    from maw_reranker.train.config import TrainOptions

    base = dict(model=args.model, maw=maw, max_length=args.max_length, dataset=args.data, split="train",
                pool_engine="bm25s", pool_k=100, pools_dir=str(Path(args.work_dir) / "pools"),
                num_negatives=args.negatives, neg_rank_max=100, loss="listwise", trainable="full", lr=args.lr,
                maw_lr=args.maw_lr, batch_size=args.batch_groups, max_steps=args.steps, warmup_ratio=0.1,
                scheduler="linear", precision="fp32", seed=seed, output_dir=str(out), checkpoint_every=0,
                report_to=[], progress=False, force=True, log_every=10)
    base.update(overrides)
    return TrainOptions(**base)


# -- 1. quality ---------------------------------------------------------------------------------------------------
def test_candidates(args):
    from maw_reranker.data import load_dataset, read_run
    from maw_reranker.retrieve import build_pool
    from maw_reranker.train.data import rank_candidates

    ds = load_dataset(args.data, "test")
    pool = build_pool(ds, engine="bm25s", k=100, pools_dir=Path(args.work_dir) / "pools")
    run, qrels, queries = read_run(pool), ds.qrels(), ds.queries()
    qids = sorted(q for q in qrels if q in run)[:args.test_queries]
    cands = {q: rank_candidates(run[q])[:args.depth] for q in qids}
    texts = ds.docs().get_many({d for c in cands.values() for d in c})
    pairs = [(queries[q], texts[d]) for q in qids for d in cands[q]]
    keys = [(q, d) for q in qids for d in cands[q]]
    bm25 = {q: {d: float(run[q][d]) for d in cands[q]} for q in qids}
    return pairs, keys, {q: qrels[q] for q in qids}, bm25


def score_model(path, maw, args, pairs, keys, qrels):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.evaluate.metrics import evaluate_run

    model = CrossEncoderWithMAW.from_pretrained(path, maw=maw, max_length=args.max_length, device="cpu")
    scores = model.predict(pairs, batch_size=32)
    run: dict = {}
    for (q, d), s in zip(keys, scores):
        run.setdefault(q, {})[d] = float(s)
    return evaluate_run(run, qrels, ["nDCG@10"])


def quality(args) -> dict:
    from maw_reranker.evaluate.metrics import evaluate_run
    from maw_reranker.evaluate.summary import render_markdown, summarize
    from maw_reranker.train import train

    pairs, keys, qrels, bm25 = test_candidates(args)
    print(f"test: {len(qrels)} SciFact test queries x BM25 top-{args.depth} = {len(pairs)} pairs, "
          f"max_length {args.max_length}", flush=True)
    results: dict = {"bm25": {"-": evaluate_run(bm25, qrels, ["nDCG@10"])}}
    t = time.perf_counter()
    results["zero-shot"] = {"-": score_model(args.model, None, args, pairs, keys, qrels)}
    print(f"zero-shot nDCG@10 {results['zero-shot']['-'].aggregate['nDCG@10']:.4f} ({time.perf_counter() - t:.0f}s)",
          flush=True)
    maw = {"gating_mode": args.maw_mode, "depth_dim": 8, "maw_strength": 0.15}
    timings = {}
    for name, variant in (("finetuned", None), (f"finetuned-maw-{args.maw_mode}", maw)):
        results[name] = {}
        for seed in args.seeds:
            out = Path(args.work_dir) / name / f"seed_{seed}"
            t = time.perf_counter()
            res = train(train_options(args, out, seed, variant))
            train_s = time.perf_counter() - t
            results[name][str(seed)] = score_model(res.final_model, "auto", args, pairs, keys, qrels)
            timings[f"{name}/seed_{seed}"] = {"train_s": round(train_s, 1), "pairs_per_s": round(res.pairs_per_second, 2),
                                              "first_loss": round(res.history[0]["loss"], 4),
                                              "last_loss": round(res.history[-1]["loss"], 4)}
            print(f"{name} seed {seed}: nDCG@10 {results[name][str(seed)].aggregate['nDCG@10']:.4f} "
                  f"{timings[f'{name}/seed_{seed}']}", flush=True)
    vs_zero = summarize(results, baseline="zero-shot", measures=["nDCG@10"])
    maw_name = f"finetuned-maw-{args.maw_mode}"
    vs_ft = summarize({k: results[k] for k in ("finetuned", maw_name)}, baseline="finetuned", measures=["nDCG@10"])
    print("\n## SciFact test nDCG@10 vs zero-shot\n")
    print(render_markdown(vs_zero))
    print("\n## MAW vs non-MAW fine-tuning\n")
    print(render_markdown(vs_ft))
    return {"vs_zero_shot": vs_zero, "maw_vs_finetuned": vs_ft, "timings": timings}


# -- 2. throughput -------------------------------------------------------------------------------------------------
def throughput_pairs(args):
    """The same (query, doc, label) pairs for both trainers: our epoch-0 groups, flattened group-major."""
    from maw_reranker.train.sources import load_training_data

    opts = train_options(args, Path(args.work_dir) / "tp-data", 0, None, batch_size=args.tp_batch_groups)
    data = load_training_data(opts)
    groups = list(data.source.iter_epoch(0))
    texts = data.docs.get_many({d for g in groups for d in (g.pos, *g.negs)})
    return [(data.queries[g.qid], texts[d], 1.0 if i == 0 else 0.0)
            for g in groups for i, d in enumerate((g.pos, *g.negs))]


def _rate(stamps: list[float], pairs_per_step: int, warmup: int = 1) -> float:
    timed = stamps[warmup:]
    return pairs_per_step * (len(timed) - 1) / (timed[-1] - timed[0])


def run_ours(args, round_: int) -> float:
    from maw_reranker.train import train

    stamps = [time.perf_counter()]  # step 0 = loop start is not known; the first step is dropped as warm-up
    opts = train_options(args, Path(args.work_dir) / "tp-ours", 0, None, batch_size=args.tp_batch_groups,
                         max_steps=args.tp_steps, loss="bce", warmup_ratio=0.0)
    train(opts, callbacks=[lambda step, row: stamps.append(time.perf_counter())])
    return _rate(stamps[1:], args.tp_batch_groups * (1 + args.negatives))


def run_st(args, pairs) -> float:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback

    per_step = args.tp_batch_groups * (1 + args.negatives)
    rows = pairs[:per_step * args.tp_steps]
    dataset = Dataset.from_dict({"query": [r[0] for r in rows], "doc": [r[1] for r in rows],
                                 "label": [r[2] for r in rows]})
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    model = CrossEncoder(args.model, num_labels=1, max_length=args.max_length, device="cpu")
    targs = CrossEncoderTrainingArguments(
        output_dir=str(Path(args.work_dir) / "tp-st"), per_device_train_batch_size=per_step, max_steps=args.tp_steps,
        learning_rate=args.lr, warmup_steps=0, fp16=False, bf16=False, use_cpu=True, save_strategy="no",
        eval_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        seed=0)
    trainer = CrossEncoderTrainer(model=model, args=targs, train_dataset=dataset, loss=BinaryCrossEntropyLoss(model),
                                  callbacks=[Stamp()])
    trainer.train()
    return _rate(stamps, per_step)


def throughput(args) -> dict:
    pairs = throughput_pairs(args)
    per_step = args.tp_batch_groups * (1 + args.negatives)
    print(f"\nthroughput: batch {per_step} pairs ({args.tp_batch_groups} groups x {1 + args.negatives}), max_length "
          f"{args.max_length}, fp32, {args.tp_steps} steps per round (first dropped), {args.tp_rounds} rounds "
          "interleaved", flush=True)
    ours, st = [], []
    for r in range(args.tp_rounds):
        order = ("ours", "st") if r % 2 == 0 else ("st", "ours")
        for who in order:
            rate = run_ours(args, r) if who == "ours" else run_st(args, pairs)
            (ours if who == "ours" else st).append(rate)
            print(f"  round {r + 1} {who:4s}: {rate:.2f} pairs/s", flush=True)
    m_ours, m_st = statistics.median(ours), statistics.median(st)
    print("\n| trainer | pairs/s per round | median pairs/s |\n|---|---|---|")
    print(f"| maw-rerank train | {', '.join(f'{x:.2f}' for x in ours)} | {m_ours:.2f} |")
    print(f"| sentence-transformers CrossEncoderTrainer | {', '.join(f'{x:.2f}' for x in st)} | {m_st:.2f} |")
    print(f"\nratio maw-rerank / sentence-transformers: {m_ours / m_st:.2f}x (target >= 1.0x)")
    return {"ours": ours, "st": st, "ratio": m_ours / m_st, "pairs_per_step": per_step}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    print(f"bench_train_scifact: model {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"args {json.dumps({k: v for k, v in vars(args).items() if k not in ('model',)})}", flush=True)
    report: dict = {"args": vars(args)}
    t = time.perf_counter()
    if not args.skip_quality:
        report["quality"] = quality(args)
    if not args.skip_throughput:
        report["throughput"] = throughput(args)
    report["total_s"] = round(time.perf_counter() - t, 1)
    print(f"\ntotal {report['total_s']:.0f}s")
    (Path(args.work_dir) / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
