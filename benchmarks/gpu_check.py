"""One-command check of the MAW core on a GPU (issue 12): device and dtype safety, alpha = 0 identity, reranking
throughput and memory, and bf16 training of every learned mode. One printed table; exit code 1 on any failure.

Steps (``--dry-run`` lists them with the resolved device, model and data):
  tests   the device-sensitive tests (tests/maw/test_devices.py) on the chosen device;
  alpha0  alpha = 0 reproduces the unpatched logits, every gating mode, fp32 and bf16 weights;
  rerank  DL19 BM25 top-100 (synthetic pairs when the data is absent): non_maw and maw_default in fp32 and bf16,
          pairs/s beside sentence-transformers' CrossEncoder.predict on the same pairs, peak device memory;
  train   20 training steps under bf16 autocast for learned, gate, router (oracle supervision) and grpo;
  paths   which O_maw path is faster on this device (explicit vs one fused call per depth), the measurement behind
          maw/layer.py FUSED_DEVICES;
  triton  (cuda; on a CPU only under TRITON_INTERPRET=1, at tiny sizes) the Triton kernels (maw/triton_maw.py) against explicit_maw and one fused call per depth, at
          batch 32, L = 256, D = 8, stat and uniform, fp32 and bf16: equal to tolerance, and their times.

Model: cross-encoder/ms-marco-MiniLM-L-12-v2 (or --model, a hub id or folder), or a tiny random-weight BERT when it
is absent or with --quick. Our offline set-up (benchmarks/offline_setup.py): hub ids resolve from the Hugging Face
cache with HF_HUB_OFFLINE=1, seeded by bash ../shared/tools/seed-hf-cache.sh; on the GPU machine, the folder
benchmarks/gpu_bundle.py unpacks. Data: $MAW_DATA/trec-dl-2019-passage (default ../shared/data; or --data).
Throughput figures are measurements, not pass/fail checks.

usage: python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--dry-run] [--model ID_OR_DIR] [--data DIR]
                                      [--steps 20] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from offline_setup import CROSS_ENCODER, data_root, model_folder  # noqa: E402  (first: sets HF_HUB_OFFLINE)

STEPS = {
    "tests": "device-sensitive tests (tests/maw/test_devices.py)",
    "alpha0": "alpha = 0 identity, every gating mode, fp32 and bf16",
    "rerank": "rerank non_maw / maw_default, fp32 / bf16, vs sentence-transformers; peak memory",
    "train": "bf16-autocast training steps: learned, gate, router (oracle), grpo",
    "paths": "explicit vs fused O_maw path, inference and training (benchmarks/bench_maw_paths.py), fp32 / bf16",
    "triton": "Triton MAW kernels vs explicit_maw and fused-per-depth, B=32 L=256 D=8, stat / uniform (cuda only)",
}
MODES = ("uniform", "random", "stat", "argmax", "learned", "gate", "router", "grpo")
LEARNED = ("learned", "gate", "router", "grpo")
WORDS = ("the a of to in is what how why cat dog sat mat ran fast attention depth query document rerank search "
         "passage answer model neural ranking relevant river bank money loan water tree").split()


@dataclass
class Row:
    step: str
    case: str
    result: str  # PASS, FAIL, SKIP, INFO
    figure: str = ""
    seconds: float = 0.0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="tiny models and few pairs (the same checks, minutes on a CPU)")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and what they would use, run nothing")
    ap.add_argument("--model", default=CROSS_ENCODER,
                    help=f"the cross-encoder: hub id (from the Hugging Face cache) or folder "
                         f"(default: {CROSS_ENCODER})")
    ap.add_argument("--data", default=str(data_root() / "trec-dl-2019-passage"),
                    help="local DL19 copy (default: $MAW_DATA/trec-dl-2019-passage)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per learned mode")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--only", nargs="*", choices=list(STEPS), help="run only these steps")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no step once this many seconds have passed (the rest are SKIP rows)")
    return ap.parse_args(argv)


# -- resources --------------------------------------------------------------------------------------------------
def model_dir(args, workdir: Path) -> tuple[Path, str]:
    real = None if args.quick else model_folder(args.model)
    if real is not None and (real / "config.json").is_file():
        return real, str(args.model)
    if args.dry_run:
        return workdir / "tiny", f"tiny random BERT ({args.model} absent or --quick)"
    import transformers

    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

    transformers.utils.logging.disable_progress_bar()

    return save_tiny_cross_encoder(workdir / "tiny", WORDS, initializer_range=0.3), "tiny random BERT"


def dl19_file(args) -> Path:
    return Path(args.data) / "rank_llm" / "BM25" / "retrieve_results_dl19.json"


def load_pairs(args) -> tuple[list[tuple[str, str]], list[int], str]:
    """(pairs, group sizes, description): DL19 BM25 top-100 per query, or synthetic groups of 8."""
    path = dl19_file(args)
    if not args.quick and path.is_file():
        entries = json.loads(path.read_text())
        pairs, sizes = [], []
        for entry in entries:
            hits = entry["hits"]
            pairs.extend((entry["query"], hit["content"]) for hit in hits)
            sizes.append(len(hits))
        return pairs, sizes, f"DL19 BM25 top-100 ({len(sizes)} queries)"
    import random

    rng = random.Random(0)
    queries = 8 if args.quick else 64
    pairs = [(" ".join(rng.choices(WORDS, k=4)), " ".join(rng.choices(WORDS, k=rng.randint(8, 40))))
             for _ in range(queries * 8)]
    return pairs, [8] * queries, f"synthetic ({queries} queries x 8)"


def resolve_device(name):
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return name


def synchronize(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- steps ------------------------------------------------------------------------------------------------------
def step_tests(args, device, **_):
    kind = "cuda" if device.startswith("cuda") else "cpu"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/maw/test_devices.py", "-k", kind]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return [Row("tests", f"test_devices.py -k {kind}", "FAIL", "timed out after 240 s", 240.0)]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else proc.stderr.strip().splitlines()[-1:]
    if proc.returncode == 5 or "No module named pytest" in proc.stderr:
        result = "FAIL"
    else:
        result = "PASS" if proc.returncode == 0 else "FAIL"
    if result == "FAIL":
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return [Row("tests", f"test_devices.py -k {kind}", result, str(summary)[:70], time.perf_counter() - start)]


def step_alpha0(args, device, model_path, pairs, **_):
    import numpy as np
    import torch

    from maw_reranker import CrossEncoderWithMAW, MAWConfig
    from maw_reranker.maw.patcher import patch_model, unpatch_model

    rows = []
    sample = pairs[:64]
    for precision, dtype, tol in (("fp32", torch.float32, 1e-4), ("bf16", torch.bfloat16, 5e-2)):
        encoder = CrossEncoderWithMAW.from_pretrained(model_path, maw=None, device=device, torch_dtype=dtype)
        expected = encoder.predict(sample, batch_size=args.batch_size)
        for mode in MODES:
            start = time.perf_counter()
            patch_model(encoder.model, MAWConfig(gating_mode=mode, maw_strength=0.0))
            try:
                got = encoder.predict(sample, batch_size=args.batch_size)
                diff = float(np.abs(got - expected).max())
                ok = bool(np.isfinite(got).all()) and diff <= tol
                rows.append(Row("alpha0", f"{mode} {precision}", "PASS" if ok else "FAIL",
                                f"max abs diff {diff:.1e} (tol {tol:g})", time.perf_counter() - start))
            except Exception as exc:  # a crash is a failed check; the table names it
                rows.append(Row("alpha0", f"{mode} {precision}", "FAIL", f"{type(exc).__name__}: {exc}"[:70],
                                time.perf_counter() - start))
            finally:
                unpatch_model(encoder.model)
        del encoder
    return rows


def _timed_predict(fn, pairs, device):
    import torch

    fn(pairs[: min(len(pairs), 64)])  # warm-up: kernels, allocator
    synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    scores = fn(pairs)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.startswith("cuda") else float("nan")
    return scores, len(pairs) / seconds, peak, seconds


def step_rerank(args, device, model_path, pairs, **_):
    import numpy as np
    import torch

    from maw_reranker import CrossEncoderWithMAW, MAWConfig

    rows, results = [], {}
    mem = "peak +MiB" if device.startswith("cuda") else "peak n/a on CPU"
    for name, maw in (("non_maw", None), ("maw_default", MAWConfig())):
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            encoder = CrossEncoderWithMAW.from_pretrained(model_path, maw=maw, device=device, torch_dtype=dtype)
            try:
                scores, rate, peak, secs = _timed_predict(
                    lambda x: encoder.predict(x, batch_size=args.batch_size), pairs, device)
                results[name, precision] = (scores, rate)
                ok = bool(np.isfinite(scores).all())
                figure = f"{rate:,.0f} pairs/s" + (f", {mem} {peak:,.0f}" if peak == peak else "")
                rows.append(Row("rerank", f"{name} {precision}", "PASS" if ok else "FAIL", figure, secs))
            except Exception as exc:
                rows.append(Row("rerank", f"{name} {precision}", "FAIL", f"{type(exc).__name__}: {exc}"[:70]))
            encoder = None  # free the device memory before the next model
    for precision in ("fp32", "bf16"):
        if ("non_maw", precision) in results and ("maw_default", precision) in results:
            ratio = results["maw_default", precision][1] / results["non_maw", precision][1]
            rows.append(Row("rerank", f"maw_default/non_maw {precision}", "INFO", f"throughput ratio {ratio:.2f}"))
    rows.extend(_sentence_transformers(args, device, model_path, pairs, results))
    return rows


def _sentence_transformers(args, device, model_path, pairs, results):
    import numpy as np
    import torch

    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        return [Row("rerank", "sentence-transformers", "SKIP", "not installed")]
    rows = []
    identity = torch.nn.Identity()
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        try:
            st = CrossEncoder(str(model_path), device=device, max_length=512)
            st.to(dtype)
            scores, rate, peak, secs = _timed_predict(
                lambda x: st.predict(x, batch_size=args.batch_size, activation_fn=identity, show_progress_bar=False,
                                     convert_to_numpy=True), pairs, device)
        except Exception as exc:
            rows.append(Row("rerank", f"sentence-transformers {precision}", "SKIP",
                            f"{type(exc).__name__}: {exc}"[:70]))
            continue
        figure = f"{rate:,.0f} pairs/s" + (f", peak +MiB {peak:,.0f}" if peak == peak else "")
        ours = results.get(("non_maw", precision))
        result = "INFO"
        if ours is not None and precision == "fp32":  # the same model and pairs: the same scores
            diff = float(np.abs(np.asarray(scores, dtype=np.float32) - ours[0]).max())
            result = "PASS" if diff <= 1e-3 else "FAIL"
            figure += f"; vs ours max abs diff {diff:.1e}"
        rows.append(Row("rerank", f"sentence-transformers {precision}", result, figure, secs))
    return rows


def _groups(pairs, sizes, group_size):
    """Training groups of ``group_size`` pairs of one query (the first candidate counts as the positive)."""
    out, start = [], 0
    for size in sizes:
        if size >= group_size:
            out.append(pairs[start:start + group_size])
        start += size
    return out


def step_train(args, device, model_path, pairs, sizes, **_):
    import torch

    from maw_reranker import CrossEncoderWithMAW, MAWConfig
    from maw_reranker.maw.patcher import maw_layers
    from maw_reranker.train.routing import grpo_step, oracle_depths, router_oracle_loss, routing_gates

    group_size, n_groups = (4, 2) if args.quick else (8, 4)
    groups = _groups(pairs, sizes, group_size)

    def listwise(scores):  # [groups, group_size] -> per-group losses (the positive is candidate 0)
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return torch.nn.functional.cross_entropy(scores.float(), target, reduction="none")

    rows = []
    for mode in LEARNED:
        start = time.perf_counter()
        try:
            torch.manual_seed(0)
            encoder = CrossEncoderWithMAW.from_pretrained(model_path, maw=MAWConfig(gating_mode=mode, maw_strength=0.5),
                                                          device=device, max_length=256)
            maw_params = [p for layer in maw_layers(encoder.model).values() for p in layer.maw_parameters()]
            before = [p.detach().clone() for p in maw_params]
            ids = {id(p) for p in maw_params}
            optimizer = torch.optim.AdamW([
                {"params": [p for p in encoder.parameters() if id(p) not in ids], "lr": 2e-5},
                {"params": maw_params, "lr": 1e-3}])
            encoder.train()
            losses, extra = [], ""
            for step in range(args.steps):
                batch = [groups[(step * n_groups + i) % len(groups)] for i in range(n_groups)]
                features = encoder.tokenize([pair for group in batch for pair in group])
                features = {k: v.to(device) for k, v in features.items()}
                with encoder.autocast("bf16"):
                    if mode == "grpo":
                        out = grpo_step(encoder, features, n_groups, group_size, listwise, samples=4, beta=0.01,
                                        eta=0.01, eps=1e-6)
                        loss = out["rank"].mean() + out["loss"]
                    else:
                        oracle = (oracle_depths(encoder, features, n_groups, group_size, 8, listwise)
                                  if mode == "router" else None)
                        loss = listwise(encoder(**features).view(n_groups, group_size)).mean()
                        if oracle is not None:
                            ce, agree = router_oracle_loss(routing_gates(encoder, ("router",)), oracle, group_size)
                            loss = loss + ce
                            extra = f", oracle agreement {float(agree):.2f}"
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
            synchronize(device)
            moved = sum(not torch.equal(p, b) for p, b in zip(maw_params, before))
            finite = (all(math.isfinite(x) for x in losses)
                      and all(torch.isfinite(p).all() for p in encoder.parameters()))
            ok = finite and moved > 0
            figure = (f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {moved}/{len(maw_params)} MAW tensors moved"
                      f"{extra}")
            rows.append(Row("train", f"{mode} bf16 x{args.steps}", "PASS" if ok else "FAIL", figure,
                            time.perf_counter() - start))
            del encoder, optimizer
        except Exception as exc:
            rows.append(Row("train", f"{mode} bf16 x{args.steps}", "FAIL", f"{type(exc).__name__}: {exc}"[:70],
                            time.perf_counter() - start))
    return rows


def step_paths(args, device, **_):
    """The explicit-vs-fused table of bench_maw_paths.py on this device (quick sizes: the GPU is fast either way,
    the rule only needs the winner). Rows are INFO; the markdown table is printed as it is measured."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_maw_paths

    kind = "cuda" if device.startswith("cuda") else "cpu"
    rows = []
    for dtype in ("fp32", "bf16"):
        start = time.perf_counter()
        try:
            lines = bench_maw_paths.table(kind, dtype, quick=args.quick or kind == "cpu")
        except Exception as exc:  # noqa: BLE001 - reported as a failed row
            rows.append(Row("paths", dtype, "FAIL", f"{type(exc).__name__}: {exc}"[:70], time.perf_counter() - start))
            continue
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append(Row("paths", f"{dtype} {cells[0]} B={cells[1]} L={cells[2]}", "INFO",
                            f"fused/explicit {cells[5]} ({cells[6]} faster)", 0.0))
        rows[-1].seconds = time.perf_counter() - start
    return rows


def step_triton(args, device, **_):
    """maw/triton_maw.py on this GPU: O_maw (and, for stat, the statistics) equal to explicit_maw's on float32
    copies of the same inputs (PASS/FAIL), and the median times of the Triton, explicit and fused-per-depth paths
    (the fused path of stat takes the explicit statistics first, as layer.py's training path does)."""
    import torch

    from maw_reranker.maw import triton_maw
    from maw_reranker.maw.functional import combine_depths, depth_statistics, explicit_maw, stat_scores

    on_cuda = device.startswith("cuda")
    if not on_cuda and not triton_maw.interpreting():
        return [Row("triton", "Triton kernels", "SKIP", "cuda only (on a CPU: TRITON_INTERPRET=1, tiny sizes)")]
    reason = triton_maw.unavailable_reason(device)
    if reason is not None:
        return [Row("triton", "Triton kernels", "FAIL", reason[:70])]
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_maw_paths

    # the interpreter runs the kernels in Python: a CPU checks the step itself at tiny sizes, its times mean nothing
    batch, length, repeats = (32, 256, 5) if on_cuda else (2, 32, 1)
    rows = []
    for dtype_name, dtype, tol in (("fp32", torch.float32, 2e-4), ("bf16", torch.bfloat16, 3e-2)):
        inp, _ = bench_maw_paths.make_inputs(batch, length, device, dtype, grad=False)
        inp32, _ = bench_maw_paths.make_inputs(batch, length, device, torch.float32, grad=False)
        inp32.q, inp32.k, inp32.v = [t.float() for t in inp.q], [t.float() for t in inp.k], inp.v.float()
        valid = inp.key_valid[:, None, :, None]
        uniform = torch.full((batch, inp.depth), 1.0 / inp.depth, device=device)
        for mode in ("stat", "uniform"):
            start = time.perf_counter()
            case = f"{dtype_name} {mode} B={batch} L={length} D={inp.depth}"
            need = mode == "stat"

            def decide(rows_, stats_rows, _need=need):
                return torch.softmax(2.5 * stat_scores(stats_rows), -1) if _need else uniform[rows_]

            def fused(_inp=inp, _need=need):
                stats = depth_statistics(_inp) if _need else None
                return combine_depths(_inp, decide(slice(None), stats))

            try:
                with torch.no_grad():
                    out, _, stats = triton_maw.triton_explicit_maw(inp, decide, need_stats=need)
                    ref, _, ref_stats = explicit_maw(inp32, decide, need_stats=need)
                err = float(((out.float() - ref) * valid).abs().max())
                if need:
                    err = max(err, float((stats - ref_stats).abs().max()))
                fns = {"triton": lambda: triton_maw.triton_explicit_maw(inp, decide, need_stats=need),
                       "explicit": lambda: explicit_maw(inp, decide, need_stats=need),
                       "fused": fused}
                times = bench_maw_paths.measure({k: bench_maw_paths._no_grad(f) for k, f in fns.items()}, repeats,
                                                "cuda" if on_cuda else "cpu")
            except Exception as exc:  # noqa: BLE001 - reported as a failed row
                rows.append(Row("triton", case, "FAIL", f"{type(exc).__name__}: {exc}"[:70],
                                time.perf_counter() - start))
                continue
            rows.append(Row("triton", case, "PASS" if err <= tol else "FAIL", f"max |diff| {err:.1e} (tol {tol:g})",
                            time.perf_counter() - start))
            rows.append(Row("triton", case, "INFO", "ms: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in times.items())
                            + f"; explicit/triton {times['explicit'] / times['triton']:.2f}"))
            print(f"  {case}: {rows[-2].figure}; {rows[-1].figure}", flush=True)
    return rows


RUNNERS = {"tests": step_tests, "alpha0": step_alpha0, "rerank": step_rerank, "train": step_train,
           "paths": step_paths, "triton": step_triton}


# -- output -----------------------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    header = ("step", "case", "result", "figure", "s")
    body = [(r.step, r.case, r.result, r.figure, f"{r.seconds:.1f}") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    lines = [fmt.format(*header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + [fmt.format(*b) for b in body])


def main(argv=None) -> int:
    args = parse_args(argv)
    steps = args.only or list(STEPS)
    device = resolve_device(args.device) if not args.dry_run else (args.device or "cuda if available, else cpu")
    with tempfile.TemporaryDirectory(prefix="maw-gpu-check-") as tmp:
        path, model_name = model_dir(args, Path(tmp))
        data = dl19_file(args)
        data_desc = (f"DL19 from {data}" if not args.quick and data.is_file()
                     else "synthetic pairs (DL19 absent or --quick)")
        print(f"device: {device}; model: {model_name}; data: {data_desc}; training steps: {args.steps}")
        if args.dry_run:
            for name in steps:
                print(f"  {name:7s} {STEPS[name]}")
            return 0
        import torch
        import transformers

        transformers.utils.logging.set_verbosity_error()  # no progress bars between the steps
        transformers.utils.logging.disable_progress_bar()
        gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
        print(f"torch {torch.__version__}; GPU: {gpu}")
        pairs, sizes, pairs_desc = load_pairs(args)
        print(f"pairs: {len(pairs)} ({pairs_desc})")
        rows: list[Row] = []
        total = time.perf_counter()
        for name in steps:
            if args.deadline_s is not None and time.perf_counter() - total >= args.deadline_s:
                rows.append(Row(name, STEPS[name][:40], "SKIP", f"--deadline-s {args.deadline_s:g} s spent"))
                continue
            print(f"... {name}", flush=True)
            done = RUNNERS[name](args, device=device, model_path=path, pairs=pairs, sizes=sizes)
            rows.extend(done)
            print(table(done), flush=True)  # each step's rows as they come: a run stopped later keeps them
        failed = [r for r in rows if r.result == "FAIL"]
        print()
        print(table(rows))
        print(f"\n{len(rows)} rows, {len(failed)} failed, {time.perf_counter() - total:.0f} s in all")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
