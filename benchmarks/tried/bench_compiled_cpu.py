"""A path that was tried and not kept: MAW inference on a CPU by two ``torch.compile``d kernels (issue 21).

``compiled_cpu_kernels.patch`` adds ``maw/cpu_kernels.py`` and a hook in ``functional.explicit_maw``. The kernels
make each depth's scores from the stacked queries and keys inside the kernel, so that no map should be stored. Then
this script times one MAW layer against the backbone layer, with the kernels (``MAW_COMPILE=1``) and without
(``MAW_COMPILE=0``), interleaved in one process. The figures and the reason the path was not kept are in docs/maw.md
("MAW's own cost"). To reproduce, on a clean checkout:

    git apply benchmarks/tried/compiled_cpu_kernels.patch
    python benchmarks/tried/bench_compiled_cpu.py
    git apply -R benchmarks/tried/compiled_cpu_kernels.patch
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_maw_layer as layer_bench  # noqa: E402

MODES = ("stat", "uniform", "argmax")


def main() -> None:
    try:
        import maw_reranker.maw.cpu_kernels  # noqa: F401
    except ImportError:
        sys.exit("apply benchmarks/tried/compiled_cpu_kernels.patch first (git apply)")
    depth = 8
    for batch, length in ((32, 256), (1, 256), (1, 512)):
        hidden, mask = layer_bench.make_inputs(batch, length)
        layers = {mode: layer_bench.make_layer(depth, mode) for mode in ("backbone",) + MODES}
        times: dict = {}
        with torch.no_grad():
            for module in layers.values():  # the first call compiles
                module(hidden, attention_mask=mask)
            for _ in range(5 if batch > 1 else 20):
                for env in ("1", "0"):
                    os.environ["MAW_COMPILE"] = env
                    for mode, module in layers.items():
                        if mode == "backbone" and env == "0":
                            continue
                        start = time.perf_counter()
                        module(hidden, attention_mask=mask)
                        times.setdefault((mode, env), []).append(time.perf_counter() - start)
        median = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
        base = median[("backbone", "1")]
        cells = " | ".join(f"{mode} {median[(mode, '1')] / base:.2f}x compiled, {median[(mode, '0')] / base:.2f}x eager"
                           for mode in MODES)
        print(f"batch {batch}, L={length}, D={depth}: backbone {base * 1000:.1f} ms | {cells}")


if __name__ == "__main__":
    main()
