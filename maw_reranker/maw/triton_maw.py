"""MAW inference in Triton (issue 21): statistics and ``O_maw`` without storing any attention map.

Two kernels, both flash-attention style (online softmax over blocks of keys, merged as flash attention merges its
running maximum and sum), on split-mode depth inputs stacked as ``q, k [B, H, D, L, w_max]`` (zero-padded to the
widest depth slice: zeros add nothing to a dot product) with the per-depth score scales applied in float32 inside
the kernel:

- ``_stats_kernel``, one program per (example and head, depth, block of query rows): each row's maximum, sum
  ``l = sum_k exp(s_k - m)``, ``sum_k exp(s_k - m) s_k`` and ``sum_k exp(s_k - m)^2`` give the row's max p (``1/l``),
  log-sum-exp (``m + log l``), entropy (``lse - sum_k p s``) and Herfindahl index; the program sums them over its
  valid query rows, and :func:`example_statistics` turns the partial sums into the ``[B, D, 4]`` statistics of
  ``functional._example_statistics`` (variance ``HHI/n - 1/n^2`` over the n valid keys, everything averaged over
  heads and valid query rows).
- ``_output_kernel``, one program per (example and head, block of query rows): for each depth (skipped where its
  weight is 0, so one-hot weights cost one attention) the online softmax of that depth accumulates ``P_d V``, which
  is normalized and added with weight ``w_d``: ``O_maw = sum_d w_d softmax(Q_d K_d^T) V``. V is read once per depth
  (from cache after the first).

Masks: the key-validity mask ``key_valid [B, L]`` (right padding or any boolean pattern) and, optionally, a boolean
``allowed [B, 1|H, L, L]`` (a sliding window, DeBERTa's 2D mask); an ``allowed`` that says no more than
``key_valid`` (the usual expanded padding mask) is dropped, so the kernels then read no L x L mask. Padded query rows
are excluded from the statistics and their output rows are zero (as in ``maw/reference.py``). Rows with no allowed
key give zero output and no statistics. Only keys and queries up to each example's last valid position are visited.

Not supported (:func:`unsupported` says why, and the caller takes ``functional.explicit_maw``): an additive score
bias (DeBERTa's relative-position terms), the combined map (``want_map``), autograd (inference only). Inputs may be
float32, bfloat16 or float16; accumulation is float32; float32 products are IEEE unless torch allows TF32 matmuls.

On a CPU the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was first
imported (that is how ``tests/maw/test_triton_maw.py`` checks them against the float64 reference); their speed is
measured only on a GPU, by ``benchmarks/gpu_check.py``'s ``triton`` step.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch

from maw_reranker.maw.functional import DepthInputs

try:  # optional: the caller falls back to functional.explicit_maw without it
    import triton
    import triton.language as tl
except ImportError as _exc:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    _IMPORT_ERROR: Optional[str] = f"{type(_exc).__name__}: {_exc}"
else:
    _IMPORT_ERROR = None

logger = logging.getLogger(__name__)
_LOGGED: set[str] = set()

# A score that no real score reaches: masked keys get it before the row maximum is taken, and exactly zero
# probability after (finite, so that a fully masked block gives no inf - inf).
_NEG = tl.constexpr(-1.0e30) if tl is not None else -1.0e30


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _device_type(device) -> str:
    if isinstance(device, torch.Tensor):
        device = device.device
    return torch.device(device).type


def _stdlib_interpreted() -> bool:
    """Whether triton was first imported under ``TRITON_INTERPRET=1``: its standard library (``tl.sum``, ``tl.max``)
    is then interpreted, which the interpreter needs and the compiler cannot take."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.sum, InterpretedFunction)


def unavailable_reason(device) -> Optional[str]:
    """Why the Triton kernels cannot run on ``device`` (None when they can)."""
    if triton is None:
        return f"triton is not installed ({_IMPORT_ERROR})"
    kind = _device_type(device)
    if kind == "cuda" and not (interpreting() or _stdlib_interpreted()):
        return None
    if not interpreting():
        if kind == "cuda":
            return "triton was imported under TRITON_INTERPRET=1, which is no longer set"
        return f"device {kind} is not cuda and TRITON_INTERPRET=1 is not set"
    if not _stdlib_interpreted():
        return "TRITON_INTERPRET=1 was set after triton was imported (set it before the first import of triton)"
    return None


def available(device) -> bool:
    """Triton is importable and ``device`` is a CUDA device, or the interpreter (``TRITON_INTERPRET=1``) is on."""
    return unavailable_reason(device) is None


def unsupported(inp: DepthInputs, want_map: bool = False) -> Optional[str]:
    """Why :func:`triton_explicit_maw` cannot take these inputs (None when it can)."""
    reason = unavailable_reason(inp.v.device)
    if reason is not None:
        return reason
    if inp.bias is not None:
        return "an additive score bias (DeBERTa's relative-position terms) is not supported by the Triton kernels"
    if want_map:
        return "the combined attention map (output_attentions) is not produced by the Triton kernels"
    if inp.v.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"dtype {inp.v.dtype} is not supported by the Triton kernels"
    if torch.is_grad_enabled() and (inp.v.requires_grad or any(t.requires_grad for t in inp.q + inp.k)):
        return "the Triton kernels are inference only (no autograd)"
    return None


def log_fallback(reason: str, level: int = logging.WARNING) -> None:
    """Log, once per process for each distinct reason, one line saying why the Triton path is not used."""
    if reason in _LOGGED:
        return
    _LOGGED.add(reason)
    logger.log(level, "MAW: Triton path not used (%s); using functional.explicit_maw", reason)


# -- kernels ------------------------------------------------------------------------------------------------------
# Plain functions, made Triton kernels on first use (:func:`_kernel`): JIT-compiled for CUDA tensors, interpreted
# for CPU tensors (and for CUDA ones under TRITON_INTERPRET=1), whenever this module was imported.

def _stats_kernel(Q, K, KV, SCALE, ALLOWED, KEND, OUT,
                  s_qb, s_qh, s_qd, s_ql,
                  s_kb, s_kh, s_kd, s_kl,
                  s_vb, s_vl,
                  s_ab, s_ah, s_aq, s_ak,
                  s_ob, s_oh, s_od, s_om,
                  H, L, W,
                  HAS_ALLOWED: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_bh = tl.program_id(0)
    d = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    kend = tl.load(KEND + b)
    start_m = pid_m * BLOCK_M
    if start_m < kend:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_w = tl.arange(0, BLOCK_W)
        in_m = offs_m < L
        q = tl.load(Q + b * s_qb + h * s_qh + d * s_qd + offs_m[:, None] * s_ql + offs_w[None, :],
                    mask=in_m[:, None] & (offs_w[None, :] < W), other=0.0)
        if DOT_F32:
            q = q.to(tl.float32)
        scale = tl.load(SCALE + d)
        q_valid = (tl.load(KV + b * s_vb + offs_m * s_vl, mask=in_m, other=0) != 0) & in_m
        m_i = tl.full([BLOCK_M], _NEG, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        a_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        c_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, kend, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            in_n = offs_n < L
            k = tl.load(K + b * s_kb + h * s_kh + d * s_kd + offs_n[:, None] * s_kl + offs_w[None, :],
                        mask=in_n[:, None] & (offs_w[None, :] < W), other=0.0)
            if DOT_F32:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            keep = ((tl.load(KV + b * s_vb + offs_n * s_vl, mask=in_n, other=0) != 0) & in_n)[None, :]
            if HAS_ALLOWED:
                allowed = tl.load(ALLOWED + b * s_ab + h * s_ah + offs_m[:, None] * s_aq + offs_n[None, :] * s_ak,
                                  mask=in_m[:, None] & in_n[None, :], other=0)
                keep = keep & (allowed != 0)
            s = tl.where(keep, s, _NEG)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.where(keep, tl.exp(s - m_new[:, None]), 0.0)
            l_i = l_i * alpha + tl.sum(p, 1)
            a_i = a_i * alpha + tl.sum(p * tl.where(keep, s, 0.0), 1)
            c_i = c_i * (alpha * alpha) + tl.sum(p * p, 1)
            m_i = m_new
        ok = q_valid & (l_i > 0)
        inv = tl.where(ok, 1.0 / tl.where(ok, l_i, 1.0), 0.0)
        lse = m_i + tl.log(tl.where(ok, l_i, 1.0))
        entropy = tl.where(ok, lse - a_i * inv, 0.0)
        hhi = c_i * inv * inv
        base = OUT + b * s_ob + h * s_oh + d * s_od + pid_m * s_om
        tl.store(base + 0, tl.sum(inv, 0))  # max p = exp(m - lse) = 1 / l
        tl.store(base + 1, tl.sum(entropy, 0))
        tl.store(base + 2, tl.sum(hhi, 0))
        tl.store(base + 3, tl.sum(ok.to(tl.float32), 0))


def _output_kernel(Q, K, V, KV, SCALE, WGT, ALLOWED, KEND, O,
                   s_qb, s_qh, s_qd, s_ql,
                   s_kb, s_kh, s_kd, s_kl,
                   s_Vb, s_Vh, s_Vl,
                   s_vb, s_vl,
                   s_wb, s_wh,
                   s_ab, s_ah, s_aq, s_ak,
                   s_ob, s_oh, s_ol,
                   H, D, L, W, DV,
                   HAS_ALLOWED: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
                   BLOCK_DV: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kend = tl.load(KEND + b)
    start_m = pid_m * BLOCK_M
    if start_m < kend:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_w = tl.arange(0, BLOCK_W)
        offs_c = tl.arange(0, BLOCK_DV)
        in_m = offs_m < L
        in_c = offs_c < DV
        q_valid = (tl.load(KV + b * s_vb + offs_m * s_vl, mask=in_m, other=0) != 0) & in_m
        out = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        for d in range(0, D):
            w = tl.load(WGT + b * s_wb + h * s_wh + d)
            if w != 0.0:  # one-hot weights (argmax, router) cost one attention
                q = tl.load(Q + b * s_qb + h * s_qh + d * s_qd + offs_m[:, None] * s_ql + offs_w[None, :],
                            mask=in_m[:, None] & (offs_w[None, :] < W), other=0.0)
                if DOT_F32:
                    q = q.to(tl.float32)
                scale = tl.load(SCALE + d)
                m_i = tl.full([BLOCK_M], _NEG, dtype=tl.float32)
                l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
                acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
                for start_n in range(0, kend, BLOCK_N):
                    offs_n = start_n + tl.arange(0, BLOCK_N)
                    in_n = offs_n < L
                    k = tl.load(K + b * s_kb + h * s_kh + d * s_kd + offs_n[:, None] * s_kl + offs_w[None, :],
                                mask=in_n[:, None] & (offs_w[None, :] < W), other=0.0)
                    v = tl.load(V + b * s_Vb + h * s_Vh + offs_n[:, None] * s_Vl + offs_c[None, :],
                                mask=in_n[:, None] & in_c[None, :], other=0.0)
                    if DOT_F32:
                        k = k.to(tl.float32)
                    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
                    keep = ((tl.load(KV + b * s_vb + offs_n * s_vl, mask=in_n, other=0) != 0) & in_n)[None, :]
                    if HAS_ALLOWED:
                        allowed = tl.load(ALLOWED + b * s_ab + h * s_ah + offs_m[:, None] * s_aq
                                          + offs_n[None, :] * s_ak, mask=in_m[:, None] & in_n[None, :], other=0)
                        keep = keep & (allowed != 0)
                    s = tl.where(keep, s, _NEG)
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    alpha = tl.exp(m_i - m_new)
                    p = tl.where(keep, tl.exp(s - m_new[:, None]), 0.0)
                    l_i = l_i * alpha + tl.sum(p, 1)
                    p = p.to(v.dtype)  # as flash attention: probabilities in the inputs' dtype, fp32 accumulation
                    if DOT_F32:
                        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float32), v.to(tl.float32),
                                                            input_precision=PRECISION)
                    else:
                        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=PRECISION)
                    m_i = m_new
                norm = tl.where(l_i > 0, w / tl.where(l_i > 0, l_i, 1.0), 0.0)
                out += acc * norm[:, None]
        out = tl.where(q_valid[:, None], out, 0.0)
        tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_ol + offs_c[None, :], out.to(O.dtype.element_ty),
                 mask=in_m[:, None] & in_c[None, :])


_KERNELS: dict = {}


def _kernel(fn, interpret: bool):
    """``fn`` as a Triton kernel: interpreted (CPU tensors; also CUDA ones under ``TRITON_INTERPRET=1``) or
    JIT-compiled."""
    key = (fn.__name__, interpret)
    if key not in _KERNELS:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNELS[key] = InterpretedFunction(fn)
        else:
            from triton.runtime.jit import JITFunction

            _KERNELS[key] = JITFunction(fn)
    return _KERNELS[key]


def _use_interpreter(device: torch.device) -> bool:
    return device.type != "cuda" or interpreting()


# -- launch helpers -----------------------------------------------------------------------------------------------
def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def stack_depths(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``[B, H, D, L, w_max]``: the depth slices side by side, zero-padded to the widest (contiguous)."""
    width = max(t.shape[-1] for t in tensors)
    first = tensors[0]
    out = first.new_zeros(first.shape[0], first.shape[1], len(tensors), first.shape[2], width)
    for d, t in enumerate(tensors):
        out[:, :, d, :, : t.shape[-1]] = t
    return out


def _effective_allowed(allowed: Optional[torch.Tensor], key_valid: torch.Tensor) -> Optional[torch.Tensor]:
    """``allowed`` as int8 ``[B, 1|H, L, L]``, or None when on every valid query row it allows exactly the valid
    keys (the expanded padding mask), so the kernels need only ``key_valid``."""
    if allowed is None:
        return None
    if allowed.dim() != 4:
        raise ValueError(f"allowed must be [B, 1|H, L, L], got {tuple(allowed.shape)}")
    rows_valid = key_valid[:, None, :, None]
    probe = allowed[:, :, :1] if allowed.stride(2) == 0 else allowed  # an expanded [B, 1|H, 1, L] mask
    if probe.shape[2] == 1:
        redundant = bool((probe[:, :, 0] == key_valid[:, None, :]).all()) or not bool(key_valid.any())
    else:
        redundant = bool(((probe == key_valid[:, None, None, :]) | ~rows_valid).all())
    if redundant:
        return None
    return allowed.to(torch.int8)


class _Prepared:
    """What both kernels read: stacked depths, scales, masks and per-example extents."""

    def __init__(self, inp: DepthInputs):
        v = inp.v
        if v.dim() != 4:
            raise ValueError(f"v must be [B, H, L, Dh], got {tuple(v.shape)}")
        self.batch, self.heads, self.length, self.dv = v.shape
        self.depth = inp.depth
        self.device = v.device
        self.q = stack_depths([t.to(v.dtype) for t in inp.q])
        self.k = stack_depths([t.to(v.dtype) for t in inp.k])
        self.width = self.q.shape[-1]
        self.v = v.contiguous()
        self.scale = torch.tensor([float(s) for s in inp.scale], dtype=torch.float32, device=self.device)
        key_valid = inp.key_valid.to(device=self.device, dtype=torch.bool)
        self.key_valid = key_valid
        self.kv8 = key_valid.to(torch.int8).contiguous()
        positions = torch.arange(1, self.length + 1, device=self.device)
        # One past each example's last valid position: neither keys nor query rows beyond it are visited.
        self.kend = (key_valid * positions).amax(-1).to(torch.int32).contiguous()
        self.allowed = _effective_allowed(inp.allowed, key_valid)
        self.interpret = _use_interpreter(self.device)
        self.precision = _precision(v.dtype)
        # Triton 3.9's interpreter multiplies bfloat16 blocks wrongly (numpy has no bfloat16): there the operands
        # are widened first, which is exact (bf16 x bf16 products fit in fp32), so only summation order differs.
        self.dot_f32 = self.interpret and v.dtype == torch.bfloat16
        self.block_w = _pow2(self.width)
        self.block_dv = _pow2(self.dv)

    def allowed_args(self):
        if self.allowed is None:
            return self.kv8, (0, 0, 0, 0)
        a = self.allowed
        return a, (a.stride(0), a.stride(1) if a.shape[1] > 1 else 0, a.stride(2), a.stride(3))

    def blocks(self) -> tuple[int, int, dict]:
        if self.interpret:  # fewer, larger programs: the interpreter's cost is per program and per op
            block = min(64, _pow2(self.length))
            return block, block, {}
        return 64, 64, {"num_warps": 4, "num_stages": 2}


def row_statistic_sums(prep: _Prepared) -> torch.Tensor:
    """``[B, H, D, M, 4]`` float32: per block of query rows, the sums over its valid rows of max p, entropy and HHI,
    and the number of rows summed."""
    block_m, block_n, launch = prep.blocks()
    blocks_m = triton.cdiv(prep.length, block_m)
    out = torch.zeros(prep.batch, prep.heads, prep.depth, blocks_m, 4, dtype=torch.float32, device=prep.device)
    allowed, a_strides = prep.allowed_args()
    q, k = prep.q, prep.k
    grid = (prep.batch * prep.heads, prep.depth, blocks_m)
    _kernel(_stats_kernel, prep.interpret)[grid](
        q, k, prep.kv8, prep.scale, allowed, prep.kend, out,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        prep.kv8.stride(0), prep.kv8.stride(1),
        *a_strides,
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        prep.heads, prep.length, prep.width,
        HAS_ALLOWED=prep.allowed is not None, PRECISION=prep.precision, DOT_F32=prep.dot_f32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=prep.block_w, **launch)
    return out


def example_statistics(sums: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """``[B, D, 4]`` (variance, max, entropy, HHI) from :func:`row_statistic_sums`: means over heads and valid
    query rows; variance ``HHI/n - 1/n^2`` over the n valid keys (as ``functional._example_statistics``)."""
    totals = sums.sum((1, 3))  # [B, D, 4]
    rows = totals[..., 3].clamp_min(1)
    max_p, entropy, hhi = (totals[..., j] / rows for j in range(3))
    n = key_valid.sum(-1).clamp_min(1).to(torch.float32).view(-1, 1)
    return torch.stack((hhi / n - 1.0 / (n * n), max_p, entropy, hhi), dim=-1)


def combined_output(prep: _Prepared, weights: torch.Tensor) -> torch.Tensor:
    """``O_maw [B, H, L, Dh]`` (dtype of v) for weights ``[B, D]`` or ``[B, H, D]``; padded query rows are zero."""
    b, h, d = prep.batch, prep.heads, prep.depth
    if weights.dim() == 2:
        weights = weights[:, None, :]
    if tuple(weights.shape) not in ((b, 1, d), (b, h, d)):
        raise ValueError(f"weights must be [B, D] or [B, H, D] = [{b}, {d}] or [{b}, {h}, {d}], "
                         f"got {tuple(weights.shape)}")
    w = weights.to(device=prep.device, dtype=torch.float32).contiguous()
    s_wh = w.stride(1) if w.shape[1] > 1 else 0
    block_m, block_n, launch = prep.blocks()
    out = torch.zeros_like(prep.v)
    allowed, a_strides = prep.allowed_args()
    q, k, v = prep.q, prep.k, prep.v
    grid = (b * h, triton.cdiv(prep.length, block_m))
    _kernel(_output_kernel, prep.interpret)[grid](
        q, k, v, prep.kv8, prep.scale, w, allowed, prep.kend, out,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2),
        prep.kv8.stride(0), prep.kv8.stride(1),
        w.stride(0), s_wh,
        *a_strides,
        out.stride(0), out.stride(1), out.stride(2),
        h, d, prep.length, prep.width, prep.dv,
        HAS_ALLOWED=prep.allowed is not None, PRECISION=prep.precision, DOT_F32=prep.dot_f32,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=prep.block_w, BLOCK_DV=prep.block_dv, **launch)
    return out


# -- entry points -------------------------------------------------------------------------------------------------
@torch.no_grad()
def triton_depth_statistics(inp: DepthInputs) -> torch.Tensor:
    """``[B, D, 4]`` float32 statistics, as ``functional.depth_statistics``."""
    prep = _Prepared(inp)
    return example_statistics(row_statistic_sums(prep), prep.key_valid)


@torch.no_grad()
def triton_explicit_maw(inp: DepthInputs, decide: Callable, want_output: bool = True, want_map: bool = False,
                        need_stats: bool = True, chunk: int = 0):
    """Drop-in for ``functional.explicit_maw``: returns ``(O_maw or None, None, stats or None)``.

    ``decide(rows, stats_rows)`` is called once, with ``rows = slice(0, B)`` and the whole batch's statistics
    ``[B, D, 4]`` (None when ``need_stats`` is False), and returns weights ``[B, D]`` or ``[B, H, D]``. ``chunk`` is
    accepted for the signature and ignored (nothing here grows with the batch beyond q, k, v and the output).
    ``want_map`` is not supported (check :func:`unsupported` first). Padded query rows of the output are zero.
    """
    if want_map:
        raise NotImplementedError("the Triton path does not build the combined attention map")
    reason = unavailable_reason(inp.v.device)
    if reason is not None:
        raise RuntimeError(f"Triton path unavailable: {reason}")
    if inp.bias is not None:
        raise NotImplementedError("the Triton path does not support an additive score bias")
    if not (want_output or need_stats):
        return None, None, None
    prep = _Prepared(inp)
    stats = example_statistics(row_statistic_sums(prep), prep.key_valid) if need_stats else None
    if not want_output:
        return None, None, stats
    weights = decide(slice(0, prep.batch), stats)
    return combined_output(prep, weights), None, stats


@torch.no_grad()
def maw_inference(q: list[torch.Tensor], k: list[torch.Tensor], scale: list[float], v: torch.Tensor,
                  key_valid: torch.Tensor, weights_fn: Callable[[Optional[torch.Tensor]], torch.Tensor],
                  need_stats: bool, allowed: Optional[torch.Tensor] = None):
    """``(O_maw [B, H, L, Dh], stats [B, D, 4] or None)`` from per-depth ``q[d], k[d] [B, H, L, w_d]`` with their
    score scales; ``weights_fn(stats or None)`` returns the weights ``[B, D]`` or ``[B, H, D]``."""
    inp = DepthInputs(q=list(q), k=list(k), scale=list(scale), v=v, allowed=allowed, key_valid=key_valid)
    out, _, stats = triton_explicit_maw(inp, lambda rows, stats_rows: weights_fn(stats_rows), need_stats=need_stats)
    return out, stats
