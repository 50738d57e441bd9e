"""Real check on TREC DL 2019 (BM25 top-100 with texts, 43 queries): quality and throughput of the reranker.

Prints two Markdown tables:

1. quality: the unpatched cross-encoder and the zero-shot MAW variants (D=8, last layer: stat = maw_default,
   uniform, argmax, random), nDCG@10 and RR(rel=2)@10 with paired tests against the unpatched model
   (t-test = scipy.stats.ttest_rel, Wilcoxon = scipy.stats.wilcoxon, paired bootstrap 95% CI of the mean
   difference, Cohen's d_z, Holm-Bonferroni over the variant x measure comparisons; see docs/evaluation.md);
2. throughput: our scorer (the one `maw-rerank eval` uses) in fp32 and bf16 autocast against
   sentence-transformers' ``CrossEncoder.predict`` in fp32 on the same model, pairs, batch size and
   max length (raw logits via ``activation_fn=torch.nn.Identity()``). Timings are interleaved: the queries are
   split into rounds and every round runs all three scorers in a rotating order, so background load and
   frequency drift hit each of them alike. Every scorer scores every pair exactly once.

Model: cross-encoder/ms-marco-MiniLM-L-12-v2 (or --model, a hub id or folder); data: the local copy
$MAW_DATA/trec-dl-2019-passage (default ../shared/data; or --data). Our offline set-up (benchmarks/offline_setup.py):
hub ids resolve from the Hugging Face cache with HF_HUB_OFFLINE=1, seeded by bash ../shared/tools/seed-hf-cache.sh.

usage (from the repository root; ~25 min on 2 CPU cores for all 43 queries):
    python benchmarks/bench_dl19_rerank.py [--queries N] [--batch-size 32] [--rounds 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from offline_setup import CROSS_ENCODER, data_root  # noqa: E402  (first: sets HF_HUB_OFFLINE before transformers)
from maw_reranker import CrossEncoderWithMAW, MAWConfig  # noqa: E402
from maw_reranker.data import load_dataset  # noqa: E402
from maw_reranker.evaluate.metrics import evaluate_run  # noqa: E402
from maw_reranker.evaluate.rerank import build_pairs, score_pairs, shard_qids  # noqa: E402
from maw_reranker.evaluate.summary import summarize  # noqa: E402

MEASURES = ["nDCG@10", "RR(rel=2)@10"]
REFERENCE = {"nDCG@10": (0.7216, 0.002), "RR(rel=2)@10": (0.888, 0.0005)}  # measured with a plain loop here
VARIANTS = {  # zero-shot MAW variants, D=8, inject_last_k=1, strength 0.15 (configs/models/*.yaml)
    "maw_default (stat)": MAWConfig(gating_mode="stat"),
    "maw_gating_uniform": MAWConfig(gating_mode="uniform"),
    "maw_gating_argmax": MAWConfig(gating_mode="argmax"),
    "maw_gating_random": MAWConfig(gating_mode="random"),
}
BASELINE = "non_maw (unpatched)"


def load_pairs(data: Path, n_queries: int | None):
    ds = load_dataset(data / "rank_llm" / "BM25" / "retrieve_results_dl19.json",
                      qrels=data / "qrels.dl19-passage.txt", name="dl19-rankllm-bm25")
    pair_set = build_pairs(ds.candidates(), ds.queries(), ds.docs(), max_queries=n_queries)
    return pair_set, ds.qrels()


def to_run(pairs, scores) -> dict:
    run: dict = {}
    for p, s in zip(pairs, scores):
        run.setdefault(p.qid, {})[p.docid] = float(s)
    return run


class Timed:
    """One scorer: fills its scores pair by pair and accumulates its own time."""

    def __init__(self, name, fn, n):
        self.name, self.fn, self.seconds, self.scores = name, fn, 0.0, np.full(n, np.nan, np.float32)
        self.rounds: list[float] = []  # seconds per round, to show how steady the ratio was

    def run(self, idx, pairs):
        start = time.perf_counter()
        out = self.fn(pairs)
        self.rounds.append(time.perf_counter() - start)
        self.seconds += self.rounds[-1]
        self.scores[idx] = out


def throughput(pair_set, model_dir, batch_size, max_length, rounds):
    from sentence_transformers import CrossEncoder

    ours = CrossEncoderWithMAW.from_pretrained(model_dir, maw=None, max_length=max_length, device="cpu")
    st = CrossEncoder(model_dir, max_length=max_length, device="cpu")
    identity = torch.nn.Identity()
    pairs = pair_set.pairs
    texts = [(p.query, p.doc) for p in pairs]
    scorers = [
        Timed("sentence-transformers fp32", lambda x: st.predict(x, batch_size=batch_size, activation_fn=identity,
                                                                 show_progress_bar=False, convert_to_numpy=True),
              len(pairs)),
        Timed("ours fp32", lambda x: score_pairs(ours, x, batch_size=batch_size, precision="fp32"), len(pairs)),
        Timed("ours bf16", lambda x: score_pairs(ours, x, batch_size=batch_size, precision="bf16"), len(pairs)),
    ]
    warm = texts[:batch_size]
    for s in scorers:  # first-call costs (allocator, oneDNN kernels) are not throughput
        s.fn(warm)
    for r in range(rounds):
        qids = set(shard_qids(pair_set.qids, r, rounds))
        idx = np.array([i for i, p in enumerate(pairs) if p.qid in qids])
        chunk = [texts[i] for i in idx]
        order = scorers[r % 3:] + scorers[:r % 3]
        for s in order:
            s.run(idx, chunk)
        logging.info("round %d/%d (%d pairs): %s", r + 1, rounds, len(idx),
                     ", ".join(f"{s.name} {s.rounds[-1]:.1f}s" for s in scorers))
    return scorers, ours


def quality(pair_set, qrels, baseline_scores, model_dir, batch_size, max_length):
    pairs = pair_set.pairs
    runs = {BASELINE: to_run(pairs, baseline_scores)}
    speeds, changes = {}, {}
    for name, cfg in VARIANTS.items():
        model = CrossEncoderWithMAW.from_pretrained(model_dir, maw=cfg, max_length=max_length, device="cpu")
        start = time.perf_counter()
        scores = score_pairs(model, [(p.query, p.doc) for p in pairs], batch_size=batch_size)
        speeds[name] = len(pairs) / (time.perf_counter() - start)
        runs[name] = to_run(pairs, scores)
        changes[name] = score_changes(runs[BASELINE], runs[name], baseline_scores, scores)
        logging.info("%s: %.1f pairs/s", name, speeds[name])
    results = {name: {0: evaluate_run(run, qrels, MEASURES)} for name, run in runs.items()}
    return summarize(results, BASELINE, MEASURES, dataset="dl19-rankllm-bm25"), speeds, changes


def top10(ranking: dict) -> list:
    return sorted(ranking, key=lambda d: (-ranking[d], d))[:10]


def score_changes(base_run, run, base_scores, scores) -> dict:
    """How much a variant moved the scores, and in how many queries the top-10 order changed at all."""
    return {"max_abs_score_diff": float(np.abs(np.asarray(scores) - np.asarray(base_scores)).max()),
            "top10_changed": sum(top10(base_run[q]) != top10(run[q]) for q in base_run)}


def fmt_p(p, holm) -> str:
    def one(x):
        return "n/a" if x is None or x != x else ("<1e-4" if x < 1e-4 else f"{x:.4f}")
    return f"{one(p)} / {one(holm)}"


def quality_table(summary, speeds, changes) -> str:
    head = ["variant"]
    for m in MEASURES:
        head += [m, f"Δ {m} [95% CI]", "d_z", "t-test p / Holm", "Wilcoxon p / Holm"]
    head += ["max abs Δ score", "queries with top-10 changed", "pairs/s fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, info in summary["variants"].items():
        row = [variant]
        for m in MEASURES:
            row.append(f"{info['metrics'][m]['mean']:.4f}")
            c = summary["comparisons"].get(variant, {}).get(m)
            if c is None:
                row += ["—", "—", "—", "—"]
            else:
                row += [f"{c['mean_diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]", f"{c['cohens_dz']:.3f}",
                        fmt_p(c["ttest_p"], c["ttest_p_holm"]), fmt_p(c["wilcoxon_p"], c["wilcoxon_p_holm"])]
        c = changes.get(variant)
        row += [f"{c['max_abs_score_diff']:.4f}", str(c["top10_changed"])] if c else ["—", "—"]
        row.append(f"{speeds[variant]:.1f}" if variant in speeds else "(see throughput)")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=data_root() / "trec-dl-2019-passage",
                        help="local DL19 copy (default: $MAW_DATA/trec-dl-2019-passage)")
    parser.add_argument("--model", default=CROSS_ENCODER, help=f"hub id or folder (default: {CROSS_ENCODER})")
    parser.add_argument("--queries", type=int, default=None, help="first N queries only (quick check)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=12, help="interleaving rounds of the throughput timing")
    parser.add_argument("--skip-variants", action="store_true", help="throughput and baseline only")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "sentence_transformers", "maw_reranker.evaluate.metrics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not args.data.is_dir():
        print(f"DL19 data not found at {args.data}", file=sys.stderr)
        return 2

    load_start = os.getloadavg()  # other processes on the machine distort absolute timings (ratios less so)
    pair_set, qrels = load_pairs(args.data, args.queries)
    n = len(pair_set.pairs)
    print(f"DL19 BM25 top-100: {len(pair_set.qids)} queries, {n} pairs; model {args.model}; batch {args.batch_size}, "
          f"max_length {args.max_length}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    scorers, _ = throughput(pair_set, args.model, args.batch_size, args.max_length, max(1, min(args.rounds, len(pair_set.qids))))
    st, fp32, bf16 = scorers
    speed = {s.name: n / s.seconds for s in scorers}
    ndcg = {s.name: evaluate_run(to_run(pair_set.pairs, s.scores), qrels, MEASURES).aggregate for s in scorers}
    diff = float(np.abs(fp32.scores - st.scores).max())
    bf16_diff = float(np.abs(bf16.scores - fp32.scores).max())

    summary, speeds, changes = (None, {}, {}) if args.skip_variants else quality(
        pair_set, qrels, fp32.scores, args.model, args.batch_size, args.max_length)
    if summary is None:
        summary = summarize({BASELINE: {0: evaluate_run(to_run(pair_set.pairs, fp32.scores), qrels, MEASURES)}},
                            BASELINE, MEASURES)

    print("\n### Quality (fp32; paired tests against the unpatched model, Holm over all rows x measures)\n")
    print(quality_table(summary, speeds, changes))
    base = summary["variants"][BASELINE]["metrics"]
    checks = []
    if args.queries is None:
        for m, (ref, tol) in REFERENCE.items():
            checks.append((f"unpatched {m} = {base[m]['mean']:.4f} vs reference {ref} (±{tol})",
                           abs(base[m]["mean"] - ref) <= tol))

    print("\n### Throughput (same pairs, batch size and max length; timings interleaved)\n")
    print("| scorer | precision | pairs/s | × sentence-transformers fp32 | max abs score diff | nDCG@10 | Δ nDCG@10 vs ours fp32 |")
    print("|---|---|---|---|---|---|---|")
    for s, prec, d in ((st, "fp32", 0.0), (fp32, "fp32", diff), (bf16, "bf16 autocast", bf16_diff)):
        ref_note = "—" if s is st else f"{d:.2e}" + (" (vs ST)" if s is fp32 else " (vs ours fp32)")
        delta = ndcg[s.name]["nDCG@10"] - ndcg[fp32.name]["nDCG@10"]
        print(f"| {s.name} | {prec} | {speed[s.name]:.2f} | {speed[s.name] / speed[st.name]:.3f} | {ref_note} | "
              f"{ndcg[s.name]['nDCG@10']:.4f} | {delta:+.4f} |")
    checks += [
        (f"fp32 agrees with sentence-transformers: max abs diff {diff:.2e} < 1e-4", diff < 1e-4),
        (f"fp32 speed {speed[fp32.name] / speed[st.name]:.3f}x sentence-transformers (target >= 0.95x)",
         speed[fp32.name] / speed[st.name] >= 0.95),
        (f"bf16 speed {speed[bf16.name] / speed[st.name]:.3f}x sentence-transformers fp32 (target >= 1.5x)",
         speed[bf16.name] / speed[st.name] >= 1.5),
        (f"bf16 nDCG@10 delta {ndcg[bf16.name]['nDCG@10'] - ndcg[fp32.name]['nDCG@10']:+.4f} (target within 0.005)",
         abs(ndcg[bf16.name]["nDCG@10"] - ndcg[fp32.name]["nDCG@10"]) <= 0.005),
    ]
    for s in (fp32, bf16):
        ratios = np.array(st.rounds) / np.array(s.rounds)
        print(f"\n{s.name} / sentence-transformers speed ratio per round: median {np.median(ratios):.3f}, "
              f"min {ratios.min():.3f}, max {ratios.max():.3f} ({len(ratios)} rounds)")
    print(f"\nload average (1/5/15 min) at start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, at end "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    print("\n### Checks\n")
    for text, ok in checks:
        print(f"- {'PASS' if ok else 'FAIL'}: {text}")
    if args.json:
        args.json.write_text(json.dumps({"pairs": n, "queries": len(pair_set.qids), "speed": speed,
                                         "ndcg": ndcg, "max_abs_diff_fp32": diff, "max_abs_diff_bf16": bf16_diff,
                                         "variant_speed": speeds, "variant_changes": changes, "summary": summary,
                                         "load_average": {"start": load_start, "end": os.getloadavg()},
                                         "round_seconds": {s.name: s.rounds for s in scorers},
                                         "checks": [{"check": t, "ok": ok} for t, ok in checks]}, indent=2,
                                        default=str))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
