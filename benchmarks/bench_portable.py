"""The portable checkpoint on TREC DL 2019 (BM25 top-100 with texts): one MAW-patched ms-marco-MiniLM-L-12-v2 saved
by ``CrossEncoderWithMAW.save_pretrained``, scored side by side through

  (a) transformers remote code: ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
      and a plain scoring loop (length-sorted batches, padding per batch, as (b) and (c) do);
  (b) sentence-transformers: ``CrossEncoder(folder, trust_remote_code=True).predict`` (raw logits);
  (c) the package: ``CrossEncoderWithMAW.from_pretrained(folder).predict``.

(a) and (b) run in a separate Python in which ``maw_reranker`` cannot be imported (a meta-path finder refuses it, and
the working folder is the checkpoint's), so they use only the folder's generated ``modeling_maw.py``; (c) runs here.
Each scorer scores every pair once in fp32, after one warm-up batch. Timings are interleaved: the queries are split
into rounds and every round runs the three scorers in a rotating order (the worker waits for its turn), so background
load hits them alike. Prints nDCG@10, RR(rel=2)@10, pairs/s and the largest score difference to (c), one column per
scorer.

The model is the hub id ``cross-encoder/ms-marco-MiniLM-L-12-v2`` resolved offline from the Hugging Face cache
(``bash ../shared/tools/seed-hf-cache.sh``, then ``HF_HUB_OFFLINE=1``; that copy is the INT8-dequantized one, see
../shared/data/README.md), or ``--model PATH``.

usage (from the repository root):
    HF_HUB_OFFLINE=1 python benchmarks/bench_portable.py [--queries N] [--batch-size 32] [--max-length 512]
        [--rounds 8] [--gating stat] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "cross-encoder/ms-marco-MiniLM-L-12-v2"
MEASURES = ["nDCG@10", "RR(rel=2)@10"]
# The scorers, one column each, in this order. (a) and (b) run in the worker process (no maw_reranker); (c), the
# scoring loop of `maw-rerank eval`, and (d), the PyTerrier transformer over a result frame, here.
COLUMNS = ["(a) transformers remote code", "(b) sentence-transformers", "(c) maw_reranker predict",
           "(d) PyTerrier MAWReranker"]


# -- the worker: a Python without maw_reranker -----------------------------------------------------------------------
class _RefuseMAWReranker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "maw_reranker":
            raise ModuleNotFoundError(f"No module named {name!r} (refused by bench_portable.py)", name=name)
        return None


def _batches(tokenizer, texts, batch_size, max_length):
    """Length-sorted batches of indices with their padded inputs (each batch padded to its own longest pair)."""
    encoded = tokenizer([q for q, _ in texts], [d for _, d in texts], truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, tokenizer.pad({k: [encoded[k][i] for i in idx] for k in encoded}, return_tensors="pt")


def worker(folder: str, pairs_file: str, batch_size: int, max_length: int) -> None:
    """Loads (a) and (b) from ``folder``, then scores the rounds it is told to on stdin (one JSON command a line,
    one JSON reply a line) and finally writes the scores."""
    sys.meta_path.insert(0, _RefuseMAWReranker())
    try:
        import maw_reranker  # noqa: F401
        raise SystemExit("bench_portable worker: maw_reranker is importable; the check would prove nothing")
    except ImportError:
        pass
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    job = json.loads(Path(pairs_file).read_text())
    texts, rounds = [tuple(p) for p in job["texts"]], job["rounds"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    ce = CrossEncoder(folder, trust_remote_code=True, device="cpu", max_length=max_length)
    identity = torch.nn.Identity()

    def remote(chunk):
        scores = [0.0] * len(chunk)
        with torch.inference_mode():
            for idx, batch in _batches(tokenizer, chunk, batch_size, max_length):
                for i, s in zip(idx, model(**batch).logits[:, 0].float().tolist()):
                    scores[i] = s
        return scores

    def st(chunk):
        return [float(x) for x in ce.predict(chunk, batch_size=batch_size, activation_fn=identity,
                                             show_progress_bar=False)]

    scorers = {COLUMNS[0]: remote, COLUMNS[1]: st}
    scores = {name: [None] * len(texts) for name in scorers}
    for fn in scorers.values():
        fn(texts[:batch_size])  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if "out" in command:
            break
        name, idx = command["scorer"], rounds[command["round"]]
        start = time.perf_counter()
        got = scorers[name]([texts[i] for i in idx])
        seconds = time.perf_counter() - start
        for i, value in zip(idx, got):
            scores[name][i] = value
        print(json.dumps({"seconds": seconds}), flush=True)
    def maw_layers(m):
        return [n for n, layer in m.named_modules() if hasattr(layer, "base_layer") and hasattr(layer, "maw_config")]

    info = {"class": f"{type(model).__module__}.{type(model).__qualname__}", "maw_layers": maw_layers(model),
            "st_maw_layers": maw_layers(ce.model),
            "maw_modules_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "maw_reranker")}
    Path(command["out"]).write_text(json.dumps({"scores": scores, "info": info}))


# -- the benchmark ----------------------------------------------------------------------------------------------------
class Worker:
    """The worker process, driven round by round."""

    def __init__(self, folder: Path, texts, rounds, batch_size, max_length, work: Path):
        (work / "pairs.json").write_text(json.dumps({"texts": texts, "rounds": rounds}))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env.setdefault("HF_MODULES_CACHE", str(work / "hf-modules"))
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        self.work, self.stderr = work, open(work / "worker.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve()), "--worker", str(folder), str(work / "pairs.json"),
             str(batch_size), str(max_length)], cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, bufsize=1)
        self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.stderr.close()
            raise SystemExit(f"worker failed:\n{(self.work / 'worker.log').read_text()[-4000:]}")
        return json.loads(line)

    def score(self, name: str, round_index: int) -> float:
        self.process.stdin.write(json.dumps({"scorer": name, "round": round_index}) + "\n")
        return self._reply()["seconds"]

    def finish(self) -> dict:
        out = self.work / "worker.json"
        self.process.stdin.write(json.dumps({"out": str(out)}) + "\n")
        self.process.stdin.close()
        if self.process.wait() != 0:
            raise SystemExit(f"worker failed:\n{(self.work / 'worker.log').read_text()[-4000:]}")
        self.stderr.close()
        return json.loads(out.read_text())


def pyterrier_scorer(model, batch_size: int):
    """Scores of the pairs through ``MAWReranker.transform`` over a result frame (qid, query, docno, text)."""
    import numpy as np
    import pandas as pd

    from maw_reranker.integrations.pyterrier import MAWReranker

    reranker = MAWReranker(model, batch_size=batch_size)

    def score(chunk):
        qids = {q: f"q{i}" for i, q in enumerate(dict.fromkeys(q for q, _ in chunk))}
        frame = pd.DataFrame({"qid": [qids[q] for q, _ in chunk], "query": [q for q, _ in chunk],
                              "docno": [str(i) for i in range(len(chunk))], "text": [d for _, d in chunk]})
        out = reranker.transform(frame)
        return out.set_index("docno").loc[frame["docno"], "score"].to_numpy(dtype=np.float32)

    return score


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_root = Path(os.environ.get("MAW_DATA") or REPO.parent / "shared" / "data")  # our offline set-up's copies
    parser.add_argument("--data", type=Path, default=data_root / "trec-dl-2019-passage",
                        help="local DL19 copy (default: $MAW_DATA/trec-dl-2019-passage, $MAW_DATA defaulting to "
                             "../shared/data)")
    parser.add_argument("--model", default=MODEL_ID, help="hub id (offline from the HF cache) or a folder")
    parser.add_argument("--queries", type=int, default=None, help="first N queries only (quick check)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=8, help="interleaving rounds of the timing")
    parser.add_argument("--gating", default="stat", help="MAW gating mode (D=8, last layer, alpha 0.15)")
    parser.add_argument("--keep", type=Path, default=None, help="save the portable checkpoint here (else a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"DL19 data not found at {args.data}", file=sys.stderr)
        return 2
    import logging

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from maw_reranker import CrossEncoderWithMAW, MAWConfig
    from maw_reranker.data import load_dataset
    from maw_reranker.evaluate.metrics import evaluate_run
    from maw_reranker.evaluate.rerank import build_pairs, shard_qids

    for noisy in ("transformers", "sentence_transformers", "maw_reranker.evaluate.metrics"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ds = load_dataset(args.data / "rank_llm" / "BM25" / "retrieve_results_dl19.json",
                      qrels=args.data / "qrels.dl19-passage.txt", name="dl19-rankllm-bm25")
    pair_set = build_pairs(ds.candidates(), ds.queries(), ds.docs(), max_queries=args.queries)
    pairs, qrels = pair_set.pairs, ds.qrels()
    texts = [(p.query, p.doc) for p in pairs]
    config = MAWConfig(gating_mode=args.gating)
    load_start = os.getloadavg()
    print(f"DL19 BM25 top-100: {len(pair_set.qids)} queries, {len(pairs)} pairs; model {args.model} with MAW "
          f"{args.gating} (D={config.depth_dim}, last {config.inject_last_k} layer, alpha {config.maw_strength}); "
          f"batch {args.batch_size}, max_length {args.max_length}, fp32, CPU; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    n_rounds = max(1, min(args.rounds, len(pair_set.qids)))
    rounds = []
    for r in range(n_rounds):
        qids = set(shard_qids(pair_set.qids, r, n_rounds))
        rounds.append([i for i, p in enumerate(pairs) if p.qid in qids])
    with tempfile.TemporaryDirectory(prefix="bench-portable-") as tmp:
        work = Path(tmp)
        folder = args.keep or work / "maw-minilm"
        CrossEncoderWithMAW.from_pretrained(args.model, maw=config, max_length=args.max_length,
                                            device="cpu").save_pretrained(folder)
        elsewhere = Worker(folder, texts, rounds, args.batch_size, args.max_length, work)
        ours = CrossEncoderWithMAW.from_pretrained(folder, device="cpu")
        assert ours.maw_config == config
        ours.predict(texts[:args.batch_size], batch_size=args.batch_size)  # warm-up
        # Scorers in this process: name -> fn(list of (query, doc)) -> scores.
        local = {COLUMNS[2]: lambda chunk: ours.predict(chunk, batch_size=args.batch_size)}
        try:
            local[COLUMNS[3]] = pyterrier_scorer(ours, args.batch_size)
        except ImportError:
            print("PyTerrier is not installed (pip install 'maw-reranker[pyterrier]'): column (d) left out")
        local_scores = {name: np.zeros(len(texts), dtype=np.float32) for name in local}

        def here(name: str, round_index: int) -> float:
            idx = rounds[round_index]
            start = time.perf_counter()
            local_scores[name][idx] = local[name]([texts[i] for i in idx])
            return time.perf_counter() - start

        active = COLUMNS[:2] + [n for n in COLUMNS if n in local]
        seconds = {name: [] for name in active}
        for r in range(n_rounds):
            order = active[r % len(active):] + active[:r % len(active)]
            for name in order:
                seconds[name].append(here(name, r) if name in local else elsewhere.score(name, r))
        done = elsewhere.finish()
        info = done["info"]
        results = {name: {"scores": done["scores"][name]} for name in COLUMNS[:2]}
        results.update({name: {"scores": values.tolist()} for name, values in local_scores.items()})
        for name in results:
            results[name]["seconds"] = sum(seconds[name])

    assert not info["maw_modules_loaded"] and len(info["maw_layers"]) == len(info["st_maw_layers"]) == 1, info
    reference = np.asarray(results[COLUMNS[2]]["scores"])
    rows = {"nDCG@10": {}, "RR(rel=2)@10": {}, "pairs/s": {}, "speed / (c), median of rounds": {},
            "max abs score diff vs (c)": {}}
    for name in COLUMNS:
        if name not in results:
            continue
        got = np.asarray(results[name]["scores"], dtype=np.float64)
        run: dict = {}
        for p, s in zip(pairs, got):
            run.setdefault(p.qid, {})[p.docid] = float(s)
        metrics = evaluate_run(run, qrels, MEASURES).aggregate
        rows["nDCG@10"][name] = f"{metrics['nDCG@10']:.4f}"
        rows["RR(rel=2)@10"][name] = f"{metrics['RR(rel=2)@10']:.4f}"
        rows["pairs/s"][name] = f"{len(pairs) / results[name]['seconds']:.1f}"
        ratio = np.median(np.array(seconds[COLUMNS[2]]) / np.array(seconds[name]))
        rows["speed / (c), median of rounds"][name] = f"{ratio:.2f}"
        rows["max abs score diff vs (c)"][name] = f"{np.abs(got - reference).max():.1e}"
    names = [n for n in COLUMNS if n in results]
    print(f"\nremote-code class: {info['class']} (MAW layers: {', '.join(info['maw_layers'])})\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row, values in rows.items():
        print(f"| {row} | " + " | ".join(values[n] for n in names) + " |")
    print(f"\nload average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, at end "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
    worst = max(float(rows["max abs score diff vs (c)"][n]) for n in names)
    ok = worst <= 1e-4
    print(f"\n- {'PASS' if ok else 'FAIL'}: every scorer within 1e-4 of the package's scores (largest {worst:.1e})")
    if args.json:
        args.json.write_text(json.dumps({"pairs": len(pairs), "queries": len(pair_set.qids), "table": rows,
                                         "info": info, "round_seconds": seconds,
                                         "load_average": [load_start, os.getloadavg()]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(main())
