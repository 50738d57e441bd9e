"""Which O_maw path is faster on this device: one table, measured side by side in one run (docs/MAW.md section 6).

For the gating modes that need no statistics (uniform, random, learned, gate) O_maw can be computed two ways:

* explicit  the depths' maps of a chunk from one batched matmul over narrow depth slices, combined, then one
            ``A_sel @ V`` (fewest FLOPs; ``functional.explicit_maw`` in inference,
            ``combined_attention.combined_attention`` in training, which recomputes in backward);
* fused     one ``scaled_dot_product_attention`` call per depth, ``sum_d w_d (A_d V)`` (no map in memory; D times
            the ``A V`` work; ``functional.combine_depths``).

Cells: MiniLM-L12 sizes (12 heads x 32, D = 8), batch 1 and 32, L in 128/256/512; inference (no grad), training
(forward + backward) with attention dropout 0.1 and without. Times are medians of interleaved repeats (explicit,
fused, explicit, ...) so a slow spell hits both; the ratio is fused / explicit (> 1: explicit faster).
The layer chooses by this rule (maw/layer.py): inference with no statistics and no map asked, and training without
attention dropout, take the fused path on the devices in ``FUSED_DEVICES`` (CUDA), the explicit one elsewhere;
training with dropout always takes the explicit path (one dropout mask on the combined map).

usage: python benchmarks/bench_maw_paths.py [--device cpu|cuda] [--dtype fp32|bf16] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maw_reranker.maw.combined_attention import combined_attention  # noqa: E402
from maw_reranker.maw.functional import DepthInputs, combine_depths, depth_slices, explicit_maw  # noqa: E402

HEADS, WIDTH, DEPTH = 12, 32, 8


def make_inputs(batch: int, length: int, device: str, dtype: torch.dtype, grad: bool):
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(batch, HEADS, length, WIDTH, generator=gen).to(device, dtype).requires_grad_(grad)
               for _ in range(3))
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=gen)
    lengths[0] = length
    key_valid = (torch.arange(length)[None, :] < lengths[:, None]).to(device)
    allowed = key_valid[:, None, None, :].expand(batch, 1, length, length)
    slices = depth_slices(WIDTH, DEPTH)
    inp = DepthInputs(q=[q[..., s:e] for s, e in slices], k=[k[..., s:e] for s, e in slices],
                      scale=[(e - s) ** -0.5 for s, e in slices], v=v, allowed=allowed, key_valid=key_valid)
    theta = torch.randn(batch, DEPTH, generator=gen).to(device).requires_grad_(grad)
    return inp, (q, k, v, theta)


def cell(kind: str, path: str, batch: int, length: int, device: str, dtype: torch.dtype):
    """A zero-argument callable running one cell once."""
    grad = kind != "inference"
    inp, leaves = make_inputs(batch, length, device, dtype, grad)
    dropout = 0.1 if kind == "train, dropout 0.1" else 0.0

    if kind == "inference":
        weights = torch.softmax(leaves[3], -1)
        if path == "explicit":
            return lambda: explicit_maw(inp, lambda rows, stats: weights[rows], need_stats=False)[0]
        return lambda: combine_depths(inp, weights)

    def step():
        weights = torch.softmax(leaves[3], -1)
        if path == "explicit":
            out = combined_attention(inp, weights, dropout_p=dropout)
        else:
            out = combine_depths(inp, weights, dropout_p=dropout)
        torch.autograd.grad(out.float().sum(), leaves)

    return step


def measure(fns: dict, repeats: int, device: str) -> dict:
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        with torch.inference_mode(False):
            fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rows(device: str, dtype: torch.dtype, quick: bool):
    lengths = (128, 256) if quick else (128, 256, 512)
    batches = (1, 8) if quick else (1, 32)
    repeats = 2 if quick else 5
    for kind in ("inference", "train, dropout 0.1", "train, no dropout"):
        for batch in batches:
            for length in lengths:
                fns = {path: cell(kind, path, batch, length, device, dtype) for path in ("explicit", "fused")}
                if kind == "inference":
                    fns = {name: _no_grad(fn) for name, fn in fns.items()}
                t = measure(fns, repeats, device)
                yield kind, batch, length, t["explicit"], t["fused"]


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()
    return run


def table(device: str, dtype_name: str, quick: bool) -> list[str]:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    lines = ["| work | batch | L | explicit ms | fused ms | fused / explicit | faster |", "|---|---:|---:|---:|---:|---:|---|"]
    for kind, batch, length, explicit, fused in rows(device, dtype, quick):
        ratio = fused / explicit
        lines.append(f"| {kind} | {batch} | {length} | {explicit * 1e3:.1f} | {fused * 1e3:.1f} | {ratio:.2f} | "
                     f"{'explicit' if ratio > 1 else 'fused'} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--quick", action="store_true", help="L 128/256, batch 1/8, 2 repeats")
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# MAW paths on {name}, {args.dtype}, H={HEADS}, head width {WIDTH}, D={DEPTH}")
    print("| work | batch | L | explicit ms | fused ms | fused / explicit | faster |\n|---|---:|---:|---:|---:|---:|---|")
    table(args.device, args.dtype, args.quick)


if __name__ == "__main__":
    main()
