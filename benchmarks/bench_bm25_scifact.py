"""BM25 candidate pools on SciFact (BEIR test split): both engines side by side in one run.

    python benchmarks/bench_bm25_scifact.py [--data DIR] [--engines pyserini,bm25s]

Data: the local BEIR copy $MAW_DATA/scifact (default ../shared/data; our offline set-up, benchmarks/offline_setup.py).

Targets (issue #3): pyserini reproduces the Anserini BEIR regression, nDCG@10 = 0.6789 (within 0.003) and
R@1000 >= 0.97; bm25s within 0.01 of pyserini's nDCG@10. Indexes are built from scratch in a temporary folder,
so "index s" is a real build; "search s" is retrieving the top 1000 for the 300 test queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from offline_setup import data_root  # noqa: E402

ANSERINI = {"nDCG@10": 0.6789, "R@100": 0.9253, "R@1000": 0.9767}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(data_root() / "scifact"),
                        help="BEIR SciFact folder (default: $MAW_DATA/scifact)")
    parser.add_argument("--engines", default="pyserini,bm25s", help="comma-separated engines")
    parser.add_argument("--threads", type=int, default=0, help="threads (0 = all cores)")
    args = parser.parse_args()

    from maw_reranker.cli.build_pools import pool_scores
    from maw_reranker.data import load_dataset
    from maw_reranker.retrieve import build_pool, pyserini_available
    from maw_reranker.retrieve.pyserini_env import lucene_searcher_class

    data = Path(args.data)
    if not data.is_dir():
        print(f"SciFact not found at {data}; pass --data", file=sys.stderr)
        return 2
    ds = load_dataset(data, split="test")
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-bm25-") as out:
        for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
            if engine == "pyserini":
                ok, why = pyserini_available()
                if not ok:
                    notes.append(f"pyserini skipped: {why}")
                    continue
                start = time.perf_counter()
                lucene_searcher_class()  # JVM start + Pyserini import, reported apart from index/search
                notes.append(f"pyserini one-off start (JVM + import): {time.perf_counter() - start:.1f} s")
            path = build_pool(ds, engine=engine, k=1000, pools_dir=out, threads=args.threads or None)
            meta = json.loads(path.with_name(path.name + ".json").read_text())
            scores = pool_scores(ds, path, 1000)
            rows.append((engine, scores["nDCG@10"], scores["R@100"], scores["R@1000"], meta["index_s"], meta["search_s"]))

    print(f"SciFact test ({len(ds.queries())} queries, {ds.docs_count()} docs), BM25 k1=0.9 b=0.4, top 1000; "
          f"{platform.machine()}, {os.cpu_count()} cores, threads={args.threads or os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (timings are wall clock, indexes built from scratch)")
    header = f"| {'engine':<8} | {'nDCG@10':>7} | {'R@100':>6} | {'R@1000':>6} | {'index s':>7} | {'search s':>8} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for engine, ndcg, r100, r1000, index_s, search_s in rows:
        print(f"| {engine:<8} | {ndcg:7.4f} | {r100:6.4f} | {r1000:6.4f} | {index_s:7.2f} | {search_s:8.2f} |")
    print(f"| {'Anserini':<8} | {ANSERINI['nDCG@10']:7.4f} | {ANSERINI['R@100']:6.4f} | {ANSERINI['R@1000']:6.4f} |"
          f" {'':>7} | {'':>8} |  (published regression)")
    for note in notes:
        print(note)
    by_engine = {r[0]: r for r in rows}
    checks = []
    if "pyserini" in by_engine:
        p = by_engine["pyserini"]
        checks.append(("pyserini nDCG@10 within 0.003 of 0.6789", abs(p[1] - ANSERINI["nDCG@10"]) <= 0.003))
        checks.append(("pyserini R@1000 >= 0.97", p[3] >= 0.97))
        if "bm25s" in by_engine:
            checks.append(("bm25s nDCG@10 within 0.01 of pyserini", abs(by_engine["bm25s"][1] - p[1]) <= 0.01))
    for what, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
