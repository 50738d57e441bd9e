"""The prefix cache serves only states of its own key: the tokenizer and max_length are part of it, pair keys never
collide, and a foreign, damaged or older-format shard is named, deleted and recomputed, never served."""

from __future__ import annotations

import json
import logging
import shutil
import struct

import numpy as np
import pytest
import torch

from maw_reranker import CrossEncoderWithMAW
from maw_reranker.cross_encoder.prefix import prefix_fingerprint, prefix_states
from maw_reranker.cross_encoder.prefix_cache import PrefixCache, pair_key
from maw_reranker.cross_encoder.top import CachedScorer
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder, write_word_tokenizer

WORDS = "the cat sat on a mat dog ran fast maw attention depth query document".split()
PAIRS = [("the cat", "the cat sat on a mat"), ("dog", "dog ran fast fast on the mat the cat sat"),
         ("maw depth", "attention depth query"), ("a", "a document")]
LOGGER = "maw_reranker.cross_encoder.prefix_cache"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return [save_tiny_cross_encoder(tmp_path_factory.mktemp(f"bert{seed}"), WORDS, num_layers=3, seed=seed,
                                    initializer_range=0.3) for seed in (0, 1)]


def load(path, **kwargs) -> CrossEncoderWithMAW:
    return CrossEncoderWithMAW.from_pretrained(path, maw=None, device="cpu", **kwargs)


def open_cache(root, model, **kwargs) -> PrefixCache:
    return PrefixCache(root, model, 1, dtype="fp32", show_progress=False, **kwargs)


def shards(cache: PrefixCache) -> set:
    return set(cache.path.glob("shard-*.safetensors"))


def assert_states_are_the_models(cache: PrefixCache, model) -> None:
    features = model.tokenize(PAIRS)
    expected = prefix_states(model, features, 1)["hidden_states"]
    valid = features["attention_mask"].bool()
    torch.testing.assert_close(cache.get(PAIRS)["hidden_states"][valid], expected[valid], atol=1e-6, rtol=0)


def test_pair_keys_never_collide():
    assert pair_key("ab", "c") != pair_key("a", "bc")  # a concatenation would make these one key
    assert pair_key("a\n", "b") != pair_key("a", "\nb")
    assert pair_key('a", "', "b") != pair_key("a", '", "b')
    assert pair_key("a", "b") == pair_key("a", "b")


def test_the_tokenizer_is_part_of_the_key(model_dirs, tmp_path):
    model = load(model_dirs[0])
    base = prefix_fingerprint(model, 1)
    # Same size, other vocabulary (two words swapped): same weights, other token ids.
    swapped = list(WORDS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    other_vocab = write_word_tokenizer(tmp_path / "vocab", swapped)
    assert len(other_vocab) == len(model.tokenizer)
    # Same vocabulary, other configuration (no lower-casing).
    from transformers import AutoTokenizer

    cased = AutoTokenizer.from_pretrained(model_dirs[0], do_lower_case=False)
    digests = {base, prefix_fingerprint(model, 1, tokenizer=other_vocab), prefix_fingerprint(model, 1, tokenizer=cased)}
    assert len(digests) == 3
    first = open_cache(tmp_path / "cache", model).path
    model.tokenizer = other_vocab
    assert open_cache(tmp_path / "cache", model).path != first


def test_a_changed_max_length_is_refused_not_stored(model_dirs, tmp_path):
    model = load(model_dirs[0], max_length=64)
    cache = open_cache(tmp_path, model)
    assert "L64" in cache.path.name
    model.max_length = 8  # what the L64 folder would otherwise be filled with
    for call in (lambda: cache.fill(PAIRS), lambda: cache.get_or_compute(PAIRS), cache.verify):
        with pytest.raises(RuntimeError, match="max_length 64.*max_length is now 8"):
            call()
    cache.close()
    assert not shards(cache) and len(open_cache(tmp_path, load(model_dirs[0], max_length=64))) == 0
    short = open_cache(tmp_path, model)  # its own folder
    assert "L8" in short.path.name and short.fill(PAIRS) == len(PAIRS)
    assert short.get(PAIRS)["hidden_states"].shape[1] == 8


def test_foreign_shards_are_deleted_not_served(model_dirs, tmp_path, caplog):
    ours, theirs = load(model_dirs[0]), load(model_dirs[1])  # same config and tokenizer, other weights
    foreign = open_cache(tmp_path / "theirs", theirs)
    foreign.fill(PAIRS)
    cache = open_cache(tmp_path / "ours", ours)
    (copied,) = [shutil.copy(s, cache.path) for s in shards(foreign)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert cache.refresh() == 0
    assert len(cache) == 0 and cache.missing(PAIRS) == PAIRS
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert copied.rsplit("/", 1)[-1] in record.getMessage() and "fingerprint" in record.getMessage()
    assert not shards(cache)
    assert cache.fill(PAIRS) == len(PAIRS)
    assert_states_are_the_models(cache, ours)


def _flip_data_bit(data: bytes) -> bytes:
    return data[:-5] + bytes([data[-5] ^ 0x10]) + data[-4:]


def _change_a_key(data: bytes) -> bytes:
    """A valid safetensors file whose first key (header metadata) has one hex digit changed."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    keys = json.loads(header["__metadata__"]["keys"])
    keys[0] = ("0" if keys[0][0] != "0" else "1") + keys[0][1:]
    header["__metadata__"]["keys"] = json.dumps(keys)
    raw = json.dumps(header).encode()
    raw += b" " * (size - len(raw)) if len(raw) <= size else b""
    return struct.pack("<Q", len(raw)) + raw + data[8 + size:]


DAMAGE = {"flipped bit": _flip_data_bit, "truncated": lambda d: d[:len(d) // 2], "empty": lambda d: b"",
          "garbage header": lambda d: b"\xff" * 8 + d[8:], "changed key": _change_a_key}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_shard_is_named_deleted_and_recomputed(model_dirs, tmp_path, caplog, damage):
    model = load(model_dirs[0])
    cache = open_cache(tmp_path, model)
    cache.fill(PAIRS[:2])
    kept = shards(cache)
    cache.fill(PAIRS[2:])
    (bad,) = shards(cache) - kept
    cache.close()
    bad.write_bytes(DAMAGE[damage](bad.read_bytes()))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reopened = open_cache(tmp_path, model)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert bad.name in message and "\n" not in message and ("damaged" in message or "unreadable" in message)
    assert not bad.exists() and shards(reopened) == kept
    assert reopened.missing(PAIRS) == PAIRS[2:]  # the intact shard is still served
    assert reopened.fill(PAIRS) == 2
    assert_states_are_the_models(reopened, model)


def test_a_folder_of_the_older_format_is_rebuilt(model_dirs, tmp_path, caplog):
    model = load(model_dirs[0])
    cache = open_cache(tmp_path, model)
    cache.fill(PAIRS)
    cache.close()
    meta = json.loads((cache.path / "meta.json").read_text())
    (cache.path / "meta.json").write_text(json.dumps({**meta, "format": "maw-prefix-cache/1"}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reopened = open_cache(tmp_path, model)
    assert "older format" in caplog.text and not shards(reopened) and len(reopened) == 0
    assert json.loads((cache.path / "meta.json").read_text())["format"] == meta["format"]
    (cache.path / "meta.json").write_text(json.dumps({**meta, "format": "maw-prefix-cache/99"}))
    with pytest.raises(ValueError, match="different prefix cache"):  # a newer format is not ours to delete
        open_cache(tmp_path, model)


def test_cached_scorer_takes_predicts_activation(model_dirs, tmp_path):
    model = load(model_dirs[0])
    cache = open_cache(tmp_path, model)
    scorer = CachedScorer(model, cache)
    with pytest.raises(ValueError, match="activation must be None or 'sigmoid'"):
        scorer.predict(PAIRS, activation="softmax")
    assert len(cache) == 0  # refused before any work
    for activation in (None, "sigmoid"):
        expected = model.predict(PAIRS, activation=activation)
        np.testing.assert_allclose(scorer.predict(PAIRS, activation=activation), expected, atol=1e-5)
    probabilities = scorer.predict(PAIRS, activation="sigmoid")
    assert ((probabilities > 0) & (probabilities < 1)).all()

