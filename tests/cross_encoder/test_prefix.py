"""Frozen-prefix / trainable-top split and the on-disk prefix cache: exact against the full model for every supported
architecture and gating mode, in eval and train mode (dropout), through the cache, and resumable after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import numpy as np
import torch

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.cross_encoder.prefix import (freeze_prefix, num_layers, prefix_fingerprint, prefix_maw_layers,
                                               prefix_modules, prefix_states, split_forward, split_layer, top_forward,
                                               top_parameters, train_top)
from maw_reranker.cross_encoder.prefix_cache import PrefixCache, pair_key
from maw_reranker.maw.config import GATING_MODES
from maw_reranker.maw.patcher import maw_layers
from maw_reranker.utils.tiny_models import TINY_ARCHITECTURES, save_tiny_cross_encoder

REPO = Path(__file__).resolve().parents[2]
WORDS = "the cat sat on a mat dog ran fast maw attention depth query document rerank search".split()
PAIRS = [("the cat", "the cat sat on a mat"), ("dog", "dog ran fast fast fast on the mat the cat sat"),
         ("maw depth", "attention depth query"), ("search", "rerank search document maw maw the cat"),
         ("a", "a")]
ARCHS = ("bert", "roberta", "electra", "deberta-v2")
LAYERS = 3
# Dropout on, so train mode differs from eval mode; ELECTRA with a projected (smaller) embedding; DeBERTa-v2 with the
# convolution it applies after layer 0 only.
EXTRA = {"electra": {"embedding_size": 16}, "deberta-v2": {"conv_kernel_size": 3}}


def maw_config(mode: str) -> MAWConfig:
    return MAWConfig(gating_mode=mode, depth_dim=3, maw_strength=0.6, inject_last_k=2, maw_random_seed=5)


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    out = {}
    for arch in ARCHS + ("xlm-roberta",):
        out[arch] = save_tiny_cross_encoder(tmp_path_factory.mktemp(arch), WORDS, model_type=arch, num_layers=LAYERS,
                                            initializer_range=0.3, hidden_dropout_prob=0.2,
                                            attention_probs_dropout_prob=0.2, **EXTRA.get(arch, {}))
    return out


def load(path, mode: str | None) -> CrossEncoderWithMAW:
    return nudged(CrossEncoderWithMAW.from_pretrained(path, maw=None if mode is None else maw_config(mode),
                                                      device="cpu"))


def nudged(model: CrossEncoderWithMAW) -> CrossEncoderWithMAW:
    """Move the learned MAW parameters off their neutral init, so that they matter."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in maw_layers(model.model).values():
            for p in layer.maw_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def test_tiny_models_exercise_the_architecture_specific_parts(arch_dirs):
    electra = load(arch_dirs["electra"], None)
    assert hasattr(electra.model.base_model, "embeddings_project")
    deberta = load(arch_dirs["deberta-v2"], None)
    assert deberta.model.base_model.encoder.conv is not None
    assert deberta.model.base_model.encoder.relative_attention


# -- exactness, eval mode --------------------------------------------------------------------------------------------
EVAL_CASES = [(arch, mode) for arch in ARCHS for mode in (None,) + GATING_MODES]
EVAL_CASES += [("xlm-roberta", None), ("xlm-roberta", "stat")]  # RoBERTa's code: two modes suffice


@pytest.mark.parametrize("arch,mode", EVAL_CASES)
def test_prefix_plus_top_equals_full_model_in_eval_mode(arch_dirs, arch, mode):
    model = load(arch_dirs[arch], mode)
    features = model.tokenize(PAIRS)
    with torch.no_grad():
        full = model(**features)
    for start in range(LAYERS):  # MAW sits in layers 1, 2: start 2 puts one MAW layer in the prefix
        with torch.no_grad():
            split = split_forward(model, features, start)
        torch.testing.assert_close(split, full, atol=1e-4, rtol=0)
    # Everything restored: the model is whole again.
    assert len(model.model.base_model.encoder.layer) == LAYERS
    with torch.no_grad():
        torch.testing.assert_close(model(**features), full, atol=0, rtol=0)


def test_prefix_stops_at_layer_start(arch_dirs):
    model = load(arch_dirs["bert"], "stat")
    layers = model.model.base_model.encoder.layer
    calls = []
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        states = prefix_states(model, model.tokenize(PAIRS), 1)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0]  # layer 0 only: layers >= 1 and the head never ran
    assert set(states) == {"hidden_states", "attention_mask"}
    assert states["hidden_states"].shape[:2] == states["attention_mask"].shape
    assert not states["hidden_states"].requires_grad


def test_split_checks_its_arguments(arch_dirs):
    model = load(arch_dirs["bert"], None)
    assert num_layers(model) == LAYERS and split_layer(model, 1) == LAYERS - 1
    for bad in (-1, LAYERS, 1.0):
        with pytest.raises(ValueError):
            prefix_states(model, model.tokenize(PAIRS), bad)
    with pytest.raises(ValueError):
        split_layer(model, 0)
    patched = load(arch_dirs["bert"], "stat")  # MAW in layers 1 and 2
    assert prefix_maw_layers(patched, 1) == [] and prefix_maw_layers(patched, 2) == [1]


# -- exactness, train mode with dropout, and gradients ---------------------------------------------------------------
@pytest.mark.parametrize("mode", (None,) + GATING_MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_train_mode_cached_and_uncached_top_agree_under_one_seed(arch_dirs, tmp_path, arch, mode):
    """Uncached top-k forward (the full model, prefix in eval mode without grad, top in train mode) vs the top alone
    on the prefix states, and on the states read back from an fp32 disk cache: same logits and same gradients under
    the same seed; gradients reach the top only."""
    start = LAYERS - 1
    model = load(arch_dirs[arch], mode)
    trainable = freeze_prefix(model, start)
    assert trainable and all(p.requires_grad for p in trainable)
    frozen = [p for m in prefix_modules(model, start) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    train_top(model, start)
    assert model.model.base_model.encoder.layer[start].training
    assert not any(m.training for m in prefix_modules(model, start))
    features = model.tokenize(PAIRS)
    with PrefixCache(tmp_path, model, start, dtype="fp32", show_progress=False) as cache:
        cache.fill(PAIRS)
        cached_batch = cache.get(PAIRS)
    assert torch.equal(cached_batch["attention_mask"], features["attention_mask"])  # same shapes -> same masks
    states = prefix_states(model, features, start)

    def run(step):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        logits = step()
        (logits * torch.arange(1, len(PAIRS) + 1)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}
        return logits.detach(), grads

    full, full_grads = run(lambda: model(**features))
    top, top_grads = run(lambda: top_forward(model, states, start))
    disk, disk_grads = run(lambda: top_forward(model, cached_batch, start))
    torch.testing.assert_close(top, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(disk, full, atol=1e-4, rtol=0)
    with torch.no_grad():
        model.eval()
        assert (model(**features) - full).abs().max() > 1e-4  # dropout was really on
    top_names = {n for n, _ in top_parameters(model, start)}
    assert set(full_grads) == set(top_grads) == set(disk_grads)
    assert set(top_grads) <= top_names and any(".layer.2." in n for n in top_grads)
    assert any(g.abs().sum() > 0 for g in top_grads.values())
    for name in full_grads:
        torch.testing.assert_close(top_grads[name], full_grads[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(disk_grads[name], full_grads[name], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_split_agrees_with_the_trainers_top_regime(arch_dirs, arch):
    """What the trainer's ``trainable: top`` trains is exactly what lies outside the cached prefix (else a cache would
    feed the top stale states)."""
    from maw_reranker.train.params import select_trainable

    model = load(arch_dirs[arch], "gate")
    select_trainable(model, "top", top_layers=2)
    trained = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in top_parameters(model, split_layer(model, 2))}


def test_top_trained_model_saves_and_loads_as_a_full_model(arch_dirs, tmp_path):
    start = LAYERS - 1
    model = load(arch_dirs["deberta-v2"], "learned")
    params = freeze_prefix(model, start)
    opt = torch.optim.AdamW(params, lr=1e-2)
    features = model.tokenize(PAIRS)
    states = prefix_states(model, features, start)
    for _ in range(3):
        train_top(model, start)
        opt.zero_grad()
        top_forward(model, states, start).pow(2).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        expected = top_forward(model, states, start)
    model.save_pretrained(tmp_path / "saved")
    restored = CrossEncoderWithMAW.from_pretrained(tmp_path / "saved", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(restored(**restored.tokenize(PAIRS)), expected, atol=1e-4, rtol=0)


# -- the disk cache --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_disk_cache_logits_equal_full_model(arch_dirs, tmp_path, arch):
    """fp32: equal to 1e-4. fp16: within 1e-2 (measured ~4e-4 on these models); bf16: within 5e-2 (~3e-3)."""
    start = 1
    model = load(arch_dirs[arch], "stat")
    with torch.no_grad():
        full = model(**model.tokenize(PAIRS))
    for dtype, tol in (("fp32", 1e-4), ("fp16", 1e-2), ("bf16", 5e-2)):
        with PrefixCache(tmp_path, model, start, dtype=dtype, batch_size=2, show_progress=False) as cache:
            batch = cache.get_or_compute(PAIRS)  # computed now, pending (not yet on disk)
            with torch.no_grad():
                torch.testing.assert_close(top_forward(model, batch, start), full, atol=tol, rtol=0)
        reopened = PrefixCache(tmp_path, model, start, dtype=dtype, show_progress=False)  # read back from disk
        assert len(reopened) == len(PAIRS) and not reopened.missing(PAIRS)
        with torch.no_grad():
            torch.testing.assert_close(top_forward(model, reopened.get(PAIRS), start), full, atol=tol, rtol=0)
    assert len({p.name for p in tmp_path.iterdir()}) == 3  # one folder per dtype


def test_cached_scorer_matches_model_predict(arch_dirs, tmp_path):
    from maw_reranker.cross_encoder.top import CachedScorer

    model = load(arch_dirs["deberta-v2"], "router")
    expected, depth = model.predict(PAIRS, batch_size=2, return_depth=True)
    model.train()  # predict() scores in eval mode and restores the flags
    scorer = CachedScorer(model, PrefixCache(tmp_path, model, 2, dtype="fp32", show_progress=False))
    scores, cached_depth = scorer.predict(PAIRS, batch_size=3, return_depth=True)
    torch.testing.assert_close(torch.from_numpy(scores), torch.from_numpy(expected), atol=1e-4, rtol=0)
    assert set(cached_depth) == {2}  # the MAW layers of the top (layer 1 sits in the prefix)
    for layer, info in cached_depth.items():  # the depth log, pair by pair, as predict() gives it
        assert (depth[layer]["selected"] == info["selected"]).all()
        np.testing.assert_allclose(depth[layer]["weights"], info["weights"], atol=1e-5)
    assert model.training and model.model.base_model.encoder.layer[0].training
    assert scorer.predict([]).shape == (0,)


def test_cache_batches_keep_order_duplicates_and_padding(arch_dirs, tmp_path):
    model = load(arch_dirs["bert"], None)
    cache = PrefixCache(tmp_path, model, 1, dtype="fp32", show_progress=False)
    assert cache.fill(PAIRS + PAIRS[:2]) == len(PAIRS)  # duplicates computed once
    assert cache.fill(PAIRS) == 0
    order = [PAIRS[3], PAIRS[0], PAIRS[3], PAIRS[4]]
    batch = cache.get(order)
    features = model.tokenize(order)
    assert torch.equal(batch["attention_mask"], features["attention_mask"])
    assert batch["hidden_states"].dtype == torch.float32
    states = prefix_states(model, features, 1)
    valid = features["attention_mask"].bool()
    torch.testing.assert_close(batch["hidden_states"][valid], states["hidden_states"][valid], atol=1e-5, rtol=0)
    assert (batch["hidden_states"][~valid] == 0).all()
    with pytest.raises(KeyError):
        cache.get([("not", "cached")])
    assert pair_key("ab", "c") != pair_key("a", "bc")


def test_cache_is_keyed_by_prefix_weights_start_and_length(arch_dirs, tmp_path):
    model = load(arch_dirs["bert"], "learned")
    base = prefix_fingerprint(model, 1)
    assert prefix_fingerprint(model, 2) != base
    with torch.no_grad():
        model.model.base_model.encoder.layer[2].output.dense.weight.add_(1.0)  # a top weight: same prefix
        model.model.classifier.weight.add_(1.0)
    assert prefix_fingerprint(model, 1) == base
    with torch.no_grad():
        model.model.base_model.embeddings.word_embeddings.weight[3, 0] += 1e-3  # a prefix weight: another prefix
    assert prefix_fingerprint(model, 1) != base
    first = PrefixCache(tmp_path, model, 1, dtype="fp16", show_progress=False)
    first.verify()
    with torch.no_grad():
        model.model.base_model.encoder.layer[0].output.dense.bias.add_(0.1)
    with pytest.raises(RuntimeError, match="stale"):
        first.verify()
    first = PrefixCache(tmp_path, model, 1, dtype="fp16", show_progress=False)
    model.max_length = 8
    other = PrefixCache(tmp_path, model, 1, dtype="fp16", show_progress=False)
    assert first.path != other.path and "L8" in other.path.name
    (other.path / "meta.json").write_text((first.path / "meta.json").read_text())
    with pytest.raises(ValueError, match="different prefix cache"):
        PrefixCache(tmp_path, model, 1, dtype="fp16", show_progress=False)


_KILLED_FILL = """
import os, signal, sys
from maw_reranker import CrossEncoderWithMAW
from maw_reranker.cross_encoder import prefix_cache
from maw_reranker.cross_encoder.prefix_cache import PrefixCache
model = CrossEncoderWithMAW.from_pretrained(sys.argv[1], maw=None, device="cpu")
pairs = [(f"q{i}", "the cat sat " * (i % 5 + 1)) for i in range(12)]
real, calls = prefix_cache.prefix_states, []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 4:  # three batches done (each written as its own shard): die the hard way mid-fill
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
prefix_cache.prefix_states = dying
PrefixCache(sys.argv[2], model, 1, dtype="fp16", batch_size=2, shard_mb=1e-6, show_progress=False).fill(pairs)
"""


def test_killed_fill_keeps_complete_shards_and_resumes(arch_dirs, tmp_path):
    script = tmp_path / "fill.py"
    script.write_text(_KILLED_FILL)
    root = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(arch_dirs["bert"]), str(root)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    model = load(arch_dirs["bert"], None)
    pairs = [(f"q{i}", "the cat sat " * (i % 5 + 1)) for i in range(12)]
    (folder,) = root.iterdir()
    stale = folder / ".shard-0-0-dead.safetensors.abcdefgh.tmp"  # what a kill during a write leaves
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    cache = PrefixCache(root, model, 1, dtype="fp16", batch_size=2, show_progress=False)
    assert not stale.exists()
    assert cache.num_shards == 6 and len(cache) == 6  # three complete batches of two survived, a shard a pair
    assert cache.fill(pairs) == 6  # only the rest is computed
    assert not cache.missing(pairs)
    fresh = PrefixCache(tmp_path / "fresh", model, 1, dtype="fp16", show_progress=False)
    fresh.fill(pairs)
    torch.testing.assert_close(cache.get(pairs)["hidden_states"], fresh.get(pairs)["hidden_states"], atol=2e-3,
                               rtol=0)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("maw", [False, True])
def test_first_token_logits_equal_a_full_pass(arch, maw):
    """Inside ``first_token_logits`` the last layer's feed-forward part runs for the first token alone where the
    head reads nothing else, and the logits equal a full pass's; elsewhere (ModernBERT) nothing changes."""
    from maw_reranker.cross_encoder.prefix import FIRST_TOKEN_HEADS, first_token_logits
    from maw_reranker.maw.config import MAWConfig
    from maw_reranker.maw.patcher import patch_model
    from maw_reranker.utils.tiny_models import tiny_model

    from tests.maw.test_patcher import batch

    model = tiny_model(arch, num_layers=3, initializer_range=0.3)
    if maw:
        patch_model(model, MAWConfig(inject_last_k=1, depth_dim=2, gating_mode="stat"))
    model.eval()
    layers = model.base_model.layers if arch == "modernbert" else model.base_model.encoder.layer
    shapes = []
    layers[-1].register_forward_hook(lambda m, a, out: shapes.append((out[0] if isinstance(out, tuple) else out).shape))
    inputs = batch()
    with torch.no_grad():
        full = model(**inputs).logits
        with first_token_logits(model) as applied:
            short = model(**inputs).logits
        after = model(**inputs).logits
    assert applied == (model.config.model_type in FIRST_TOKEN_HEADS)
    assert applied == (arch != "modernbert")
    length = inputs["input_ids"].shape[1]
    assert [s[1] for s in shapes] == [length, 1 if applied else length, length]  # the hook is gone after the block
    assert torch.allclose(short, full, atol=1e-5)
    assert torch.equal(after, full)


@pytest.mark.parametrize("arch", [a for a in TINY_ARCHITECTURES if a != "modernbert"])
@pytest.mark.parametrize("mode, source", [(None, None), ("uniform", "split"), ("learned", "split"), ("gate", "split"),
                                          ("stat", "split"), ("router", "split"), ("learned", "project"),
                                          ("stat", "project")])
def test_first_token_logits_of_a_maw_last_layer_and_their_gradients(arch, mode, source):
    """A MAW last layer inside ``first_token_logits`` computes its depths for the first query row alone
    (``leading_rows_maw``, a ``[B, 1, H]`` output), as a plain BERT-style one does; the logits and every
    parameter's gradient equal a full pass's, in train mode (router: soft weights) as in eval mode, and afterwards
    the layer computes every row again."""
    from maw_reranker.cross_encoder.prefix import first_token_logits
    from maw_reranker.maw import functional
    from maw_reranker.maw.config import MAWConfig
    from maw_reranker.maw.patcher import maw_layers, patch_model
    from maw_reranker.utils.tiny_models import tiny_model

    from tests.maw.test_patcher import batch

    model = tiny_model(arch, num_layers=2, initializer_range=0.3)
    if mode is None:  # a plain last layer: its self-attention computes the first query row alone too
        layer = model.base_model.encoder.layer[-1].attention.self
    else:
        patch_model(model, MAWConfig(inject_last_k=1, depth_dim=2, gating_mode=mode, depth_source=source,
                                     maw_strength=0.7))
        (layer,) = maw_layers(model).values()
    for p in layer.maw_parameters() if mode else ():  # project's zero up-projection would hide a wrong depth
        torch.nn.init.normal_(p, std=0.3)
    outputs = []
    layer.register_forward_hook(lambda m, a, out: outputs.append(out[0].shape[1]))
    inputs = batch()
    calls = []
    original = functional.leading_rows_maw

    def spy(*args, **kwargs):
        calls.append(args[2])
        if source == "project":  # keys as factors where the adapter allows (not DeBERTa's p2c term)
            assert (args[0].k_factors is not None) == (arch != "deberta-v2")
        return original(*args, **kwargs)

    for training in (False, True):
        model.train(training)
        model.zero_grad()
        torch.manual_seed(0)
        full = model(**inputs).logits
        full.sum().backward()
        full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        torch.manual_seed(0)
        import maw_reranker.maw.layer as layer_module
        layer_module.leading_rows_maw = spy
        try:
            with first_token_logits(model) as applied:
                short = model(**inputs).logits
        finally:
            layer_module.leading_rows_maw = original
        short.sum().backward()
        assert applied and calls == ([1] if mode else []) and getattr(layer, "query_rows", None) is None
        calls.clear()
        torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert grads.keys() == full_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    length = inputs["input_ids"].shape[1]
    cut = 1 if mode or arch != "deberta-v2" else length  # DeBERTa's own module computes every row
    assert outputs == [length, cut, length, cut]
    assert "forward" not in vars(layer)


def _cut_and_full(model, inputs, train=False):
    """Logits and gradients of a full pass and of one inside ``first_token_logits`` (seeded alike)."""
    from maw_reranker.cross_encoder.prefix import first_token_logits

    model.train(train)
    results = []
    for cut in (False, True):
        model.zero_grad()
        torch.manual_seed(0)
        if cut:
            with first_token_logits(model) as applied:
                logits = model(**inputs).logits
        else:
            logits = model(**inputs).logits
        logits.sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                          if p.grad is not None}))
    return results, applied


@pytest.mark.parametrize("mode", [None, "stat"])
def test_first_token_cut_with_eager_attention_left_padding_and_a_4d_mask(mode):
    """The eager attention function (an additive 4D mask, cut to the first query row) and left padding."""
    from maw_reranker.maw.patcher import patch_model
    from maw_reranker.utils.tiny_models import tiny_model

    model = tiny_model("bert", num_layers=2, initializer_range=0.3)
    model.config._attn_implementation = "eager"
    if mode:
        patch_model(model, MAWConfig(inject_last_k=1, depth_dim=2, gating_mode=mode, maw_strength=0.7))
    ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding: the first token is padding in this row
    mask[2, 6:] = 0
    (full, full_grads), (cut, cut_grads) = _cut_and_full(model, {"input_ids": ids, "attention_mask": mask})[0]
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)
    for name, g in cut_grads.items():
        torch.testing.assert_close(g, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("maw", [False, True])
def test_gradient_checkpointing_turns_the_cut_off(maw):
    """Its recomputation in backward runs outside the block: the cut does not apply, and training works."""
    from maw_reranker.utils.tiny_models import tiny_model

    from tests.maw.test_patcher import batch

    model = tiny_model("bert", num_layers=2)
    encoder = CrossEncoderWithMAW(model, None, maw=MAWConfig(inject_last_k=1, depth_dim=2, gating_mode="learned")
                                  if maw else None)
    model.gradient_checkpointing_enable()
    (full, full_grads), (cut, cut_grads) = _cut_and_full(model, batch(), train=True)[0]
    assert not _cut_and_full(model, batch(), train=True)[1]
    encoder.train()
    encoder(**batch()).sum().backward()  # raised in backward before the check
    for name, g in cut_grads.items():
        torch.testing.assert_close(g, full_grads[name])


def test_a_peft_wrapped_model_is_cut_inside():
    """The classifier is the transformers model inside a PEFT wrapper (whose class name ends alike)."""
    from peft import LoraConfig, get_peft_model

    from maw_reranker.cross_encoder.prefix import first_token_logits
    from maw_reranker.utils.tiny_models import tiny_model

    from tests.maw.test_patcher import batch

    model = get_peft_model(tiny_model("bert", num_layers=2, initializer_range=0.3),
                           LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    inputs = batch()
    with torch.no_grad():
        full = model(**inputs).logits
        with first_token_logits(model) as applied:
            cut = model(**inputs).logits
    assert applied
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(CrossEncoderWithMAW(model, None)(**inputs), full[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("maw", [False, True])
def test_overlapping_blocks_leave_nothing_behind(maw):
    """Blocks that overlap without nesting (entered a, b; left a, b) cut until the last one ends, then nothing is
    left: no ``query_rows``, no instance ``forward``, no hook; a later full pass computes every token."""
    from maw_reranker.cross_encoder.prefix import first_token_logits
    from maw_reranker.maw.patcher import patch_model
    from maw_reranker.utils.tiny_models import tiny_model

    from tests.maw.test_patcher import batch

    model = tiny_model("bert", num_layers=2, initializer_range=0.3).eval()
    if maw:
        patch_model(model, MAWConfig(inject_last_k=1, depth_dim=2, gating_mode="uniform"))
    attention = model.base_model.encoder.layer[-1].attention
    inputs = batch()
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)
        a, b = first_token_logits(model), first_token_logits(model)
        a.__enter__()
        b.__enter__()
        a.__exit__(None, None, None)
        assert model(**inputs, output_hidden_states=True).hidden_states[-1].shape[1] == 1  # b still cuts
        b.__exit__(None, None, None)
        after = model(**inputs, output_hidden_states=True)
    assert getattr(attention.self, "query_rows", None) is None and "forward" not in vars(attention.self)
    assert not attention._forward_hooks and not attention.output._forward_pre_hooks
    assert torch.equal(after.hidden_states[-1], full.hidden_states[-1])


def test_forced_passes_keep_their_parts_apart_for_the_cut():
    """The forced-pass memo keys on the rows: a forced pass inside the block, then the same inputs outside it, gives
    the full pass's output, not one row broadcast."""
    from maw_reranker.cross_encoder.prefix import first_token_logits
    from maw_reranker.maw.patcher import patch_model
    from maw_reranker.utils.tiny_models import tiny_model

    from tests.maw.test_patcher import batch

    model = tiny_model("bert", num_layers=2, initializer_range=0.3).eval()
    patch_model(model, MAWConfig(inject_last_k=1, depth_dim=2, gating_mode="router", maw_strength=0.7))
    (layer,) = maw_layers(model).values()
    inputs = batch()
    outputs = []
    layer.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
    layer.gating.forced_depth = torch.ones(inputs["input_ids"].shape[0], dtype=torch.long)
    try:
        with torch.no_grad():
            layer.release_memos()
            model(**inputs)
            layer.release_memos()
            with first_token_logits(model):
                model(**inputs)
            model(**inputs)  # the same arguments as inside the block
        reference, cut, again = outputs
    finally:
        layer.gating.forced_depth = None
        layer.release_memos()
    assert cut.shape[1] == 1 and again.shape == reference.shape
    torch.testing.assert_close(again, reference)
