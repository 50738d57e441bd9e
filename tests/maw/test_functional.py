"""Fast path vs the plain reference, masking, and statistics (docs/MAW.md sections 2-6)."""

import math

import pytest
import torch

from maw_reranker.maw.functional import (DepthInputs, combine_depths, depth_slices, depth_statistics,
                                         selected_attention, stat_scores)
from maw_reranker.maw.reference import reference_maw, reference_stat_weights


def make_inputs(depth, width=10, batch=4, heads=3, length=12, seed=0, pad=True, bias=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, width, generator=gen) * 2
    k = torch.randn(batch, heads, length, width, generator=gen) * 2
    v = torch.randn(batch, heads, length, width, generator=gen)
    key_valid = torch.ones(batch, length, dtype=torch.bool)
    if pad:
        for b, n in enumerate([length, 7, 3, 10][:batch]):
            key_valid[b, n:] = False
    allowed = key_valid[:, None, None, :].expand(batch, 1, length, length)
    slices = depth_slices(width, depth)
    extra = torch.randn(batch, heads, length, length, generator=gen) if bias else None
    bias_fn = None
    if bias:
        def bias_fn(d, index, heads=slice(None), rows=slice(None)):
            t = extra * (d + 1) / depth
            return (t if index is None else t[index])[:, heads, rows]
    return DepthInputs(q=[q[..., s:e] for s, e in slices], k=[k[..., s:e] for s, e in slices],
                       scale=[(e - s) ** -0.5 for s, e in slices], v=v, allowed=allowed, key_valid=key_valid,
                       bias=bias_fn)


def test_depth_slices_follow_tensor_split():
    for width, depth in [(10, 3), (32, 8), (7, 7), (10, 1)]:
        sizes = [e - s for s, e in depth_slices(width, depth)]
        assert sizes == [t.shape[0] for t in torch.tensor_split(torch.arange(width), depth)]
    with pytest.raises(ValueError, match="depth_dim"):
        depth_slices(4, 5)


@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_fast_stat_path_matches_reference(depth, bias):
    inp = make_inputs(depth, bias=bias)
    stats = depth_statistics(inp, chunk=3)  # chunking across the batch must not matter
    weights = torch.softmax(2.5 * stat_scores(stats), dim=-1)
    fast = combine_depths(inp, weights)
    ref_out, ref_map, ref_w = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    valid = inp.key_valid[:, None, :, None]
    assert torch.allclose(weights.double(), ref_w, atol=1e-5)
    assert torch.allclose((fast * valid).double(), ref_out, atol=1e-5)
    fast_map = selected_attention(inp, weights)
    both = inp.key_valid[:, None, :, None] & inp.key_valid[:, None, None, :]
    assert torch.allclose((fast_map * both).double(), ref_map, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_statistics_match_reference(depth):
    from maw_reranker.maw.reference import reference_attention_5d, reference_statistics

    inp = make_inputs(depth)
    fast = depth_statistics(inp)
    for b in range(inp.v.shape[0]):
        a5, _ = reference_attention_5d(inp, b)
        assert torch.allclose(fast[b].double(), reference_statistics(a5), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("depth", [3, 8])
def test_hard_weights_use_selected_depth_only(depth):
    inp = make_inputs(depth)
    selected = torch.tensor([0, depth - 1, 1, 1])
    weights = torch.nn.functional.one_hot(selected, depth).float()
    hard = combine_depths(inp, weights, hard=True)
    soft = combine_depths(inp, weights, hard=False)
    assert torch.allclose(hard, soft, atol=1e-6)


def test_per_head_weights_match_reference():
    inp = make_inputs(3)
    weights = torch.softmax(torch.randn(4, 3, 3), dim=-1)  # [B, H, D]
    fast = combine_depths(inp, weights)
    ref_out, _, _ = reference_maw(inp, lambda b, s: weights[b])
    valid = inp.key_valid[:, None, :, None]
    assert torch.allclose((fast * valid).double(), ref_out, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_masked_keys_get_zero_attention_at_every_depth(depth):
    from maw_reranker.maw.functional import depth_scores

    inp = make_inputs(depth)
    masked = ~inp.key_valid[:, None, None, :].expand(-1, inp.v.shape[1], inp.v.shape[2], -1)
    for d in range(depth):
        probs = torch.softmax(depth_scores(inp, d), dim=-1)
        assert probs[masked].abs().max().item() == 0.0
    weights = torch.full((4, depth), 1.0 / depth)
    assert selected_attention(inp, weights)[masked].abs().max().item() == 0.0


def test_padded_query_rows_change_no_statistic():
    inp = make_inputs(4)
    before = depth_statistics(inp)
    # Scramble what padded positions hold: statistics are over valid rows and keys only.
    for t in inp.q + inp.k:
        rows = t.transpose(1, 2)  # [B, L, H, w] view
        rows[~inp.key_valid] = torch.randn_like(rows[~inp.key_valid]) * 50
    after = depth_statistics(inp)
    assert torch.allclose(before, after, atol=1e-6)


def test_padding_does_not_change_a_short_example():
    """An example scored alone equals the same example padded inside a batch."""
    inp = make_inputs(3)
    weights = torch.softmax(2.5 * stat_scores(depth_statistics(inp)), dim=-1)
    out = combine_depths(inp, weights)
    n = int(inp.key_valid[2].sum())
    alone = DepthInputs(q=[q[2:3, :, :n] for q in inp.q], k=[k[2:3, :, :n] for k in inp.k], scale=inp.scale,
                        v=inp.v[2:3, :, :n], allowed=None, key_valid=torch.ones(1, n, dtype=torch.bool))
    w_alone = torch.softmax(2.5 * stat_scores(depth_statistics(alone)), dim=-1)
    assert torch.allclose(weights[2], w_alone[0], atol=1e-5)
    assert torch.allclose(out[2, :, :n], combine_depths(alone, w_alone)[0], atol=1e-5)


@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 0])
def test_fused_inference_path_matches_reference(depth, bias, chunk):
    from maw_reranker.maw.functional import explicit_maw

    inp = make_inputs(depth, bias=bias)

    def decide(rows, stats_rows):
        return torch.softmax(2.5 * stat_scores(stats_rows), dim=-1)

    out, a_map, stats = explicit_maw(inp, decide, want_map=True, chunk=chunk)
    ref_out, ref_map, ref_w = reference_maw(inp, lambda b, s: reference_stat_weights(s, 2.5))
    valid = inp.key_valid[:, None, :, None]
    both = inp.key_valid[:, None, :, None] & inp.key_valid[:, None, None, :]
    assert torch.allclose(torch.softmax(2.5 * stat_scores(stats), -1).double(), ref_w, atol=1e-5)
    assert torch.allclose((out * valid).double(), ref_out, atol=1e-5)
    assert torch.allclose((a_map * both).double(), ref_map, atol=1e-5)


def test_fused_inference_path_with_per_head_weights_and_left_padding():
    from maw_reranker.maw.functional import explicit_maw

    inp = make_inputs(3)
    # Left padding: valid tokens are not a prefix, so chunks cannot be trimmed.
    inp.key_valid = inp.key_valid.flip(-1)
    inp.allowed = inp.key_valid[:, None, None, :].expand_as(inp.allowed)
    weights = torch.softmax(torch.randn(4, 3, 3), dim=-1)
    out, _, _ = explicit_maw(inp, lambda rows, s: weights[rows], need_stats=False, chunk=2)
    ref_out, _, _ = reference_maw(inp, lambda b, s: weights[b])
    valid = inp.key_valid[:, None, :, None]
    assert torch.allclose((out * valid).double(), ref_out, atol=1e-5)


@pytest.mark.parametrize("chunk_elements", [1 << 20, 200])  # 200: one example per chunk, cut into head groups
@pytest.mark.parametrize("sharp", [False, True])  # sharp: p at key 0 underflows, so lse falls back to the max
def test_statistics_match_reference_with_head_groups_and_underflow(monkeypatch, chunk_elements, sharp):
    from maw_reranker.maw import functional
    from maw_reranker.maw.reference import reference_attention_5d, reference_statistics

    monkeypatch.setattr(functional, "_CHUNK_ELEMENTS", chunk_elements)
    inp = make_inputs(3, heads=4)
    if sharp:
        inp.q = [q * 40 for q in inp.q]
        probs = torch.softmax(torch.matmul(inp.q[0], inp.k[0].transpose(-1, -2)) * inp.scale[0], -1)
        assert (probs[..., 0] < 1e-30).any()  # the case this test is about
    fast = depth_statistics(inp)
    for b in range(inp.v.shape[0]):
        a5, _ = reference_attention_5d(inp, b)
        assert torch.allclose(fast[b].double(), reference_statistics(a5), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("batch,chunk", [(1, 0), (8, 1), (8, 0)])  # (8, 1): a chunk's maps kept between passes
@pytest.mark.parametrize("chunk_elements", [1 << 20, 100])  # 100: one head, a few query rows per tile
@pytest.mark.parametrize("need_stats", [True, False])
def test_tiled_inference_matches_reference(monkeypatch, batch, chunk, chunk_elements, need_stats):
    from maw_reranker.maw import functional

    monkeypatch.setattr(functional, "_CHUNK_ELEMENTS", chunk_elements)
    inp = make_inputs(3, batch=batch, bias=True)
    per_head = torch.softmax(torch.randn(batch, 3, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    _check_explicit_against_reference(inp, per_head, need_stats, chunk)


def _check_explicit_against_reference(inp, fixed, need_stats, chunk):
    """``explicit_maw`` with the stat weights (``need_stats``) or the ``fixed`` ones: output, map and weights equal
    the reference's on valid positions."""
    from maw_reranker.maw.functional import explicit_maw

    def decide(rows, stats_rows):
        return torch.softmax(2.5 * stat_scores(stats_rows), dim=-1) if need_stats else fixed[rows]

    out, a_map, stats = explicit_maw(inp, decide, want_map=True, need_stats=need_stats, chunk=chunk)
    ref_out, ref_map, ref_w = reference_maw(
        inp, (lambda b, s: reference_stat_weights(s, 2.5)) if need_stats else (lambda b, s: fixed[b]))
    valid = inp.key_valid[:, None, :, None]
    both = inp.key_valid[:, None, :, None] & inp.key_valid[:, None, None, :]
    assert torch.allclose((out * valid).double(), ref_out, atol=1e-5)
    assert torch.allclose((a_map * both).double(), ref_map, atol=1e-5)
    if need_stats:
        assert torch.allclose(torch.softmax(2.5 * stat_scores(stats), -1).double(), ref_w, atol=1e-5)


@pytest.mark.parametrize("need_stats", [True, False])
def test_batch_one_scratch_memory_is_a_fraction_of_one_attention_map(monkeypatch, need_stats):
    """At batch 1 the D maps of the example are never all held: every scratch buffer stays within half of one
    ordinary attention map (H x L x L), with statistics (second pass) or without (tiles combined at once)."""
    from maw_reranker.maw import functional

    sizes = []
    original = functional._buffer

    def recording(buffers, name, shape, like):
        sizes.append(math.prod(shape))
        return original(buffers, name, shape, like)

    monkeypatch.setattr(functional, "_buffer", recording)
    heads, length = 4, 128
    inp = make_inputs(8, width=16, batch=1, heads=heads, length=length, pad=False)
    uniform = torch.full((1, 8), 1 / 8)
    functional.explicit_maw(inp, lambda rows, s: uniform, want_map=True, need_stats=need_stats)
    one_map = heads * length * length
    assert sizes and max(sizes) <= one_map / 2, (max(sizes), one_map)


@pytest.mark.parametrize("batch,chunk", [(1, 0), (8, 1), (8, 0)])  # (1, 0): second pass; (8, 1): maps kept
@pytest.mark.parametrize("bias", [False, True])
def test_one_hot_weights_compute_only_the_selected_depth(monkeypatch, batch, chunk, bias):
    """argmax / router at inference: the combination is the selected depth's map itself, and a second pass
    recomputes only that depth; outputs and maps still match the reference."""
    from maw_reranker.maw import functional

    shapes = []
    original = functional._buffer

    def recording(buffers, name, shape, like):
        if name == "scores":
            shapes.append(shape)
        return original(buffers, name, shape, like)

    monkeypatch.setattr(functional, "_buffer", recording)
    inp = make_inputs(3, batch=batch, bias=bias)

    def decide(rows, stats_rows):
        return torch.nn.functional.one_hot(stat_scores(stats_rows).argmax(-1), 3).float()

    out, a_map, _ = functional.explicit_maw(inp, decide, want_map=True, chunk=chunk)
    ref_out, ref_map, _ = reference_maw(
        inp, lambda b, s: torch.nn.functional.one_hot(reference_stat_weights(s, 1.0).argmax(-1), 3).double())
    valid = inp.key_valid[:, None, :, None]
    both = inp.key_valid[:, None, :, None] & inp.key_valid[:, None, None, :]
    assert torch.allclose((out * valid).double(), ref_out, atol=1e-5)
    assert torch.allclose((a_map * both).double(), ref_map, atol=1e-5)
    if batch == 1:  # statistics pass over 3 depths, then the output pass over the selected one only
        assert {s[2] for s in shapes} == {3, 1}


@pytest.mark.parametrize("batch,chunk", [(4, 4), (12, 2)])  # (4, 4): second pass; (12, 2): maps kept
@pytest.mark.parametrize("need_stats", [True, False])
def test_mixed_one_hot_selections_in_one_chunk_are_combined(batch, chunk, need_stats):
    """Examples of one chunk selecting different depths: each gets its own depth's map."""
    from maw_reranker.maw.functional import explicit_maw

    inp = make_inputs(3, batch=batch)
    weights = torch.eye(3)[[0, 2, 1, 2] * (batch // 4)]
    out, a_map, _ = explicit_maw(inp, lambda rows, s: weights[rows], want_map=True, need_stats=need_stats,
                                 chunk=chunk)
    ref_out, ref_map, _ = reference_maw(inp, lambda b, s: weights[b].double())
    valid = inp.key_valid[:, None, :, None]
    both = inp.key_valid[:, None, :, None] & inp.key_valid[:, None, None, :]
    assert torch.allclose((out * valid).double(), ref_out, atol=1e-5)
    assert torch.allclose((a_map * both).double(), ref_map, atol=1e-5)


def test_nothing_asked_returns_nothing():
    from maw_reranker.maw.functional import explicit_maw

    assert explicit_maw(make_inputs(3), None, want_output=False, need_stats=False) == (None, None, None)


def test_fp16_statistics_do_not_overflow_at_long_inputs():
    """Row log-sum-exps of about 12 over 12 heads x 512 rows sum past fp16's maximum (65504): sums are float32."""
    from maw_reranker.maw.functional import _example_statistics

    rowstats = torch.full((4, 1, 12, 2, 512), 0.01, dtype=torch.float16)
    rowstats[1] = 12.0
    stats = _example_statistics(rowstats, torch.ones(1, 512, dtype=torch.bool), torch.tensor([512]), full_rows=True)
    assert torch.isfinite(stats).all()
    assert torch.allclose(stats[0, :, 2], torch.tensor(12.0 - 0.01), atol=0.02)  # entropy = lse - sum p s
    masked = _example_statistics(rowstats, torch.ones(1, 512, dtype=torch.bool), torch.tensor([512]))
    assert torch.isfinite(masked).all()


@pytest.mark.parametrize("need_stats", [True, False])
def test_bf16_inputs_on_a_cpu_are_computed_in_float32(need_stats):
    """On a CPU the maps of bf16 inputs are float32 (faster there, and statistics keep float32 precision): the
    result is the float32 computation on the same values, rounded once at the end."""
    from maw_reranker.maw.functional import explicit_maw, map_dtype

    inp = make_inputs(3, batch=4)
    low = DepthInputs(q=[t.bfloat16() for t in inp.q], k=[t.bfloat16() for t in inp.k], scale=inp.scale,
                      v=inp.v.bfloat16(), allowed=inp.allowed, key_valid=inp.key_valid)
    high = DepthInputs(q=[t.float() for t in low.q], k=[t.float() for t in low.k], scale=inp.scale,
                       v=low.v.float(), allowed=inp.allowed, key_valid=inp.key_valid)
    assert map_dtype(low.v) == torch.float32 and map_dtype(inp.v.double()) == torch.float64

    def decide(rows, stats_rows):
        return torch.softmax(2.5 * stat_scores(stats_rows), -1) if need_stats else torch.full((rows.stop - rows.start, 3), 1 / 3)

    out_low, _, stats_low = explicit_maw(low, decide, need_stats=need_stats)
    out_high, _, stats_high = explicit_maw(high, decide, need_stats=need_stats)
    assert out_low.dtype == torch.bfloat16
    assert torch.equal(out_low, out_high.bfloat16())
    if need_stats:
        assert torch.equal(stats_low, stats_high)


@pytest.mark.parametrize("need_stats", [True, False])
@pytest.mark.parametrize("chunk", [0, 1, 3])
def test_inference_reads_stacked_depths_as_the_reference_does(need_stats, chunk):
    """Depths given as one [B, H, D, L, w] view (the layer's split heads) and per-depth scales that differ: the
    output, the map and the statistics equal the reference's (the queries are scaled once per chunk, the view itself
    untouched)."""
    plain = make_inputs(4, width=12)
    q, k = torch.cat(plain.q, -1), torch.cat(plain.k, -1)
    before = q.clone()
    scales = [0.2, 0.5, 1.0, 1.5]
    inp = DepthInputs.stacked(q.unflatten(-1, (4, 3)).transpose(2, 3), k.unflatten(-1, (4, 3)).transpose(2, 3),
                              scales, v=plain.v, allowed=plain.allowed, key_valid=plain.key_valid)
    fixed = torch.softmax(torch.randn(inp.v.shape[0], 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    _check_explicit_against_reference(inp, fixed, need_stats, chunk)
    assert torch.equal(q, before)  # the view's scaling went to a copy
