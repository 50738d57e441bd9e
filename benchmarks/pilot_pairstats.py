"""Truncation at max_length and R@depth of the pilot's pairs (docs/study.md, Pilot): SciFact train subset (the
fixed 150 queries of `max_queries: 150`, their bm25s top-10 and positives) and SciFact test top-10 / top-20.
Usage: HF_HUB_OFFLINE=1 python benchmarks/pilot_pairstats.py $MAW_DATA"""
import sys
from maw_reranker.data.load import load_dataset
from maw_reranker.data.dataset import fetch_texts
from maw_reranker.retrieve.candidates import resolve_candidates
from maw_reranker.train.sources import subset_queries
from transformers import AutoTokenizer

root = sys.argv[1]
tok = AutoTokenizer.from_pretrained("cross-encoder/ms-marco-MiniLM-L-12-v2")
def lengths(pairs):
    enc = tok([q for q, _ in pairs], [d for _, d in pairs], truncation=False)
    return [len(x) for x in enc["input_ids"]]
for split, depth in (("test", 10), ("test", 20), ("train", 10)):
    ds = load_dataset(f"{root}/scifact", split=split)
    cands = resolve_candidates(ds, engine="bm25s", k=100, pools_dir="pools")
    run = cands.run
    qrels = ds.qrels()
    queries = ds.queries()
    qids = [q for q in run if q in qrels]
    if split == "train":
        qids = sorted(set(subset_queries(qids, 150)))
    tops = {q: [d for d, _ in sorted(run[q].items(), key=lambda x: -x[1])[:depth]] for q in qids}
    rel = {q: {d for d, g in qrels[q].items() if g > 0} for q in qids}
    recall = sum(len(rel[q] & set(tops[q])) / len(rel[q]) for q in qids if rel[q]) / sum(1 for q in qids if rel[q])
    docids = {d for q in qids for d in tops[q]} | {d for q in qids for d in rel[q]}
    texts = fetch_texts(ds.docs(), docids)
    pairs = [(queries[q], texts[d]) for q in qids for d in tops[q] if d in texts]
    if split == "train":
        pairs += [(queries[q], texts[d]) for q in qids for d in rel[q] if d in texts and d not in tops[q]]
    L = lengths(pairs)
    print(f"{split} depth {depth}: {len(qids)} queries, R@{depth} {recall:.4f}, {len(pairs)} pairs; "
          + ", ".join(f">{m}: {sum(l > m for l in L)} ({100*sum(l > m for l in L)/len(L):.1f}%)" for m in (128, 192, 256)))
