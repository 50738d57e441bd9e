"""The Triton MAW kernels (maw/triton_maw.py) in Triton's CPU interpreter (TRITON_INTERPRET=1), held against the
float64 reference (maw/reference.py) and functional.explicit_maw; plus an ahead-of-time compile for sm_90, which
needs no GPU. Skipped when triton is not installed.

Triton's interpreter needs TRITON_INTERPRET=1 when triton is first imported (its standard library is decorated
then). This module sets it for that import when triton is not imported yet, and puts the environment back; when
another module imported triton first, the interpreted tests skip here and ``test_in_a_fresh_process`` runs this
file again in a process of its own.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if "triton" not in sys.modules:
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    finally:
        if _before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _before

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton; the dev extra has it)")

from maw_reranker.maw import triton_maw  # noqa: E402
from maw_reranker.maw.functional import (DepthInputs, depth_slices, explicit_maw, fix_empty_rows,  # noqa: E402
                                         stat_scores)
from maw_reranker.maw.reference import (reference_attention_5d, reference_maw, reference_stat_weights,  # noqa: E402
                                        reference_statistics)

REPO = Path(__file__).resolve().parents[2]
READY = triton_maw._stdlib_interpreted()
ANY_PROCESS = {"test_in_a_fresh_process", "test_kernels_compile_for_sm90"}  # not interpreted here


@pytest.fixture(autouse=True)
def interpret(request, monkeypatch):
    """The kernels read TRITON_INTERPRET when called (CPU tensors always run interpreted)."""
    if request.node.originalname not in ANY_PROCESS and not READY:
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (test_in_a_fresh_process runs these)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, **extra}


def test_in_a_fresh_process():
    if READY:
        pytest.skip("the interpreted tests run in this process")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def make_inputs(depth, width=16, batch=3, heads=2, length=13, lengths=None, seed=0, dtype=torch.float32,
                key_valid=None, allowed=None):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, width, generator=gen) * 2
    k = torch.randn(batch, heads, length, width, generator=gen) * 2
    v = torch.randn(batch, heads, length, width, generator=gen)
    if key_valid is None:
        lengths = lengths or [length, length - 4, 3, length - 1][:batch]
        key_valid = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    if allowed is None:  # as the layer builds it: the expanded padding mask, empty (padded) rows allowed everywhere
        allowed = fix_empty_rows(key_valid[:, None, None, :].expand(batch, 1, length, length))
    slices = depth_slices(width, depth)
    return DepthInputs(q=[q[..., s:e].to(dtype) for s, e in slices], k=[k[..., s:e].to(dtype) for s, e in slices],
                       scale=[(e - s) ** -0.5 for s, e in slices], v=v.to(dtype), allowed=allowed,
                       key_valid=key_valid)


def reference_stats(inp):
    return torch.stack([reference_statistics(reference_attention_5d(inp, b)[0]) for b in range(inp.v.shape[0])])


def valid_rows(inp, t):
    return t * inp.key_valid[:, None, :, None].to(t.dtype)


# Depth 3 of width 16 gives slices 6, 5, 5 and depth 8 of width 20 gives 3, 3, 3, 3, 2, 2, 2, 2: uneven widths.
SHAPES = [dict(depth=1), dict(depth=3), dict(depth=8, width=20, heads=4, length=40, batch=2, lengths=[40, 29])]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s['depth']}")
def test_statistics_match_reference_and_explicit_path(shape):
    inp = make_inputs(**shape)
    stats = triton_maw.triton_depth_statistics(inp)
    assert stats.shape == (inp.v.shape[0], inp.depth, 4) and stats.dtype == torch.float32
    assert torch.allclose(stats.double(), reference_stats(inp), atol=1e-5, rtol=1e-5)
    _, _, explicit = explicit_maw(inp, decide=None, want_output=False)
    assert torch.allclose(stats, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s['depth']}")
def test_stat_mode_matches_reference_and_explicit_path(shape):
    inp = make_inputs(**shape)

    def decide(rows, stats_rows):
        return torch.softmax(2.5 * stat_scores(stats_rows), dim=-1)

    out, a_map, stats = triton_maw.triton_explicit_maw(inp, decide)
    assert a_map is None and out.dtype == inp.v.dtype and out.shape == inp.v.shape
    ref_out, _, _ = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    assert torch.allclose(out.double(), ref_out, atol=1e-5)  # padded query rows are zero, as in the reference
    fast_out, _, fast_stats = explicit_maw(inp, decide)
    assert torch.allclose(out, valid_rows(inp, fast_out), atol=1e-5)
    assert torch.allclose(stats, fast_stats, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "random", "per_head", "one_hot"])
def test_weights_without_statistics(kind):
    inp = make_inputs(depth=3, heads=3, length=13, seed=1)
    batch, heads = inp.v.shape[:2]
    gen = torch.Generator().manual_seed(5)
    if kind == "uniform":
        weights = torch.full((batch, 3), 1 / 3)
    elif kind == "random":
        weights = torch.softmax(torch.randn(batch, 3, generator=gen), -1)
    elif kind == "per_head":
        weights = torch.softmax(torch.randn(batch, heads, 3, generator=gen), -1)
    else:
        weights = torch.nn.functional.one_hot(torch.tensor([2, 0, 1]), 3).float()
    calls = []

    def decide(rows, stats_rows):
        calls.append((rows, stats_rows))
        return weights

    out, _, stats = triton_maw.triton_explicit_maw(inp, decide, need_stats=False)
    assert stats is None and calls == [(slice(0, batch), None)]
    ref_out, _, _ = reference_maw(inp, lambda b, s: weights[b])
    assert torch.allclose(out.double(), ref_out, atol=1e-5)


def test_arbitrary_key_mask_and_sliding_window():
    length, batch = 13, 2
    key_valid = torch.ones(batch, length, dtype=torch.bool)
    key_valid[0, [1, 4, 5, 11]] = False  # holes, not right padding
    key_valid[1, 9:] = False
    pos = torch.arange(length)
    window = ((pos[:, None] - pos[None, :]).abs() <= 3)[None, None] & key_valid[:, None, None, :]
    allowed = fix_empty_rows(window.expand(batch, 2, length, length).clone())
    for mask in (None, allowed):  # key mask only, then a 4D mask the kernels must read
        inp = make_inputs(depth=3, batch=batch, length=length, key_valid=key_valid, allowed=mask, seed=2)
        if mask is None:
            inp.allowed = None
        weights = torch.softmax(torch.randn(batch, 3, generator=torch.Generator().manual_seed(3)), -1)
        out, _, stats = triton_maw.triton_explicit_maw(inp, lambda rows, s: weights)
        ref_out, _, _ = reference_maw(inp, lambda b, s: weights[b])
        assert torch.allclose(out.double(), ref_out, atol=1e-5)
        ref = reference_stats(inp)
        # max, entropy and HHI are the reference's; variance uses n = the valid keys (functional's definition,
        # exact without a window), so it is held against the explicit path.
        assert torch.allclose(stats[..., 1:].double(), ref[..., 1:], atol=1e-5, rtol=1e-5)
        inp_explicit = inp if mask is not None else make_inputs(depth=3, batch=batch, length=length,
                                                                key_valid=key_valid, seed=2)
        _, _, explicit = explicit_maw(inp_explicit, decide=None, want_output=False)
        assert torch.allclose(stats, explicit, atol=1e-5, rtol=1e-5)


def test_redundant_mask_is_dropped():
    inp = make_inputs(depth=3)
    assert triton_maw._effective_allowed(inp.allowed, inp.key_valid) is None
    window = inp.allowed.clone()
    window[:, :, 0, 1] = False
    assert triton_maw._effective_allowed(window, inp.key_valid) is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_inputs(dtype):
    inp = make_inputs(depth=3, dtype=dtype, seed=4)

    def decide(rows, stats_rows):
        return torch.softmax(2.5 * stat_scores(stats_rows), dim=-1)

    out, _, stats = triton_maw.triton_explicit_maw(inp, decide)
    assert out.dtype == dtype and stats.dtype == torch.float32
    ref_out, _, _ = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    assert torch.allclose(out.double(), ref_out, atol=3e-2)
    assert torch.allclose(stats.double(), reference_stats(inp), atol=5e-3, rtol=1e-2)


def test_maw_inference_interface():
    inp = make_inputs(depth=3)
    seen = []

    def weights_fn(stats):
        seen.append(stats)
        return torch.softmax(2.5 * stat_scores(stats), dim=-1)

    out, stats = triton_maw.maw_inference(inp.q, inp.k, inp.scale, inp.v, inp.key_valid, weights_fn, need_stats=True)
    assert seen[0] is stats and stats.shape == (3, 3, 4)
    ref_out, _, _ = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    assert torch.allclose(out.double(), ref_out, atol=1e-5)


def test_availability_and_fallback_reasons(monkeypatch, caplog):
    inp = make_inputs(depth=3)
    assert triton_maw.available("cpu") and triton_maw.unsupported(inp) is None
    inp.bias = lambda d, index, heads=None, rows=None: None
    assert "bias" in triton_maw.unsupported(inp)
    assert "output_attentions" in triton_maw.unsupported(make_inputs(depth=3), want_map=True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_maw.available("cpu") and "TRITON_INTERPRET" in triton_maw.unavailable_reason("cpu")
    with pytest.raises(RuntimeError, match="unavailable"):
        triton_maw.triton_explicit_maw(make_inputs(depth=3), lambda rows, s: None)
    monkeypatch.setattr(triton_maw, "_LOGGED", set())
    with caplog.at_level(logging.INFO, logger=triton_maw.__name__):
        for _ in range(3):
            triton_maw.log_fallback("a reason")
    assert [r.getMessage() for r in caplog.records].count(
        "MAW: Triton path not used (a reason); using functional.explicit_maw") == 1


_COMPILE = r"""
import inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from maw_reranker.maw import triton_maw

def compile_kernel(fn, pointers, consts):
    names = list(inspect.signature(fn).parameters)
    signature = {n: "constexpr" if n in consts else pointers.get(n, "i32") for n in names}
    src = ASTSource(JITFunction(fn), signature, constexprs={(names.index(n),): v for n, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})

blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_W=16)
stats = compile_kernel(triton_maw._stats_kernel,
                       dict(Q="*bf16", K="*bf16", KV="*i8", SCALE="*fp32", ALLOWED="*i8", KEND="*i32", OUT="*fp32"),
                       dict(HAS_ALLOWED=True, PRECISION="tf32", DOT_F32=False, **blocks))
out = compile_kernel(triton_maw._output_kernel,
                     dict(Q="*fp32", K="*fp32", V="*fp32", KV="*i8", SCALE="*fp32", WGT="*fp32", ALLOWED="*i8",
                          KEND="*i32", O="*fp32"),
                     dict(HAS_ALLOWED=False, PRECISION="ieee", DOT_F32=False, BLOCK_DV=64, **blocks))
assert stats.asm["cubin"] and out.asm["cubin"]
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The compiled (not interpreted) kernels pass Triton's front end and ptxas for an H100/H200, without a GPU
    (in a process without TRITON_INTERPRET, whose triton is the compiling one)."""
    proc = subprocess.run([sys.executable, "-c", _COMPILE], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=_clean_env(TRITON_DEFAULT_FP_FUSION="1"))
    if proc.returncode != 0 and ("ptxas" in proc.stderr.lower() or "backends" in proc.stderr.lower()):
        pytest.skip(f"cannot compile for sm_90 with this triton build: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
