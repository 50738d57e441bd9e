"""sentence-transformers interop (cross_encoder/st_interop.py): CrossEncoderWithMAW.from_sentence_transformers from a
CrossEncoder object or folder, and back through the portable checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.cross_encoder.loading import MAWMismatchError
from maw_reranker.maw.patcher import maw_layers, maw_named_parameters, patch_model
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

st = pytest.importorskip("sentence_transformers")

WORDS = "what is maw attention depth the weather nice today a cross encoder scores pairs of text".split()
PAIRS = [("what is maw", "maw attention depth"), ("what is maw", "the weather is nice today"),
         ("cross encoder", "scores pairs of text with attention at every depth"), ("a", "b")]
CONFIG = MAWConfig(depth_dim=4, gating_mode="stat", maw_strength=0.5, inject_last_k=2)
ATOL = 1e-5


@pytest.fixture(scope="module", params=["bert", "modernbert"])
def folder(request, tmp_path_factory):
    return save_tiny_cross_encoder(tmp_path_factory.mktemp(request.param), WORDS, model_type=request.param,
                                   initializer_range=0.3)


def _st_logits(ce):
    return ce.predict(PAIRS, batch_size=2, activation_fn=torch.nn.Identity(), show_progress_bar=False)


def test_from_a_crossencoder_object(folder):
    ce = st.CrossEncoder(str(folder), device="cpu")
    before = _st_logits(ce)
    plain = CrossEncoderWithMAW.from_sentence_transformers(ce, device="cpu")  # "auto": the CrossEncoder has no MAW
    assert plain.maw_config is None
    np.testing.assert_allclose(plain.predict(PAIRS, batch_size=2), before, atol=ATOL, rtol=0)
    # sentence-transformers' default for a one-label model is a sigmoid of the same logits
    np.testing.assert_allclose(plain.predict(PAIRS, activation="sigmoid"), ce.predict(PAIRS), atol=ATOL, rtol=0)

    maw = CrossEncoderWithMAW.from_sentence_transformers(ce, maw=CONFIG, device="cpu")
    expected = CrossEncoderWithMAW.from_pretrained(folder, maw=CONFIG, device="cpu").predict(PAIRS)
    np.testing.assert_allclose(maw.predict(PAIRS), expected, atol=ATOL, rtol=0)
    assert np.abs(expected - before).max() > 1e-3
    assert not maw_layers(ce.model)  # the CrossEncoder itself is left as it was
    np.testing.assert_allclose(_st_logits(ce), before, atol=0, rtol=0)


def test_from_a_crossencoder_folder(folder, tmp_path):
    ce = st.CrossEncoder(str(folder), device="cpu")
    ce.save_pretrained(str(tmp_path / "st"))
    maw = CrossEncoderWithMAW.from_sentence_transformers(tmp_path / "st", maw=CONFIG, device="cpu")
    expected = CrossEncoderWithMAW.from_pretrained(folder, maw=CONFIG, device="cpu").predict(PAIRS)
    np.testing.assert_allclose(maw.predict(PAIRS), expected, atol=ATOL, rtol=0)
    plain = CrossEncoderWithMAW.from_sentence_transformers(str(tmp_path / "st"), maw=None, device="cpu")
    np.testing.assert_allclose(plain.predict(PAIRS, batch_size=2), _st_logits(ce), atol=ATOL, rtol=0)


def test_round_trip_through_a_portable_checkpoint(folder, tmp_path):
    encoder = CrossEncoderWithMAW.from_pretrained(folder, maw=MAWConfig(depth_dim=4, gating_mode="gate",
                                                                        maw_strength=0.5), device="cpu")
    with torch.no_grad():
        for _, param in maw_named_parameters(encoder.model):
            param.normal_(0, 0.5)
    saved = encoder.save_pretrained(tmp_path / "maw")
    expected = encoder.predict(PAIRS, batch_size=2)

    ce = st.CrossEncoder(str(saved), trust_remote_code=True, device="cpu")  # the folder's modeling_maw.py
    np.testing.assert_allclose(_st_logits(ce), expected, atol=ATOL, rtol=0)
    back = CrossEncoderWithMAW.from_sentence_transformers(ce, device="cpu")  # "auto": the MAW it carries
    assert back.maw_config == encoder.maw_config
    assert type(back.model).__module__.startswith("transformers.models.")  # the architecture's own class again
    assert len(maw_layers(back.model)) == 1  # and the package's MAW layers
    np.testing.assert_allclose(back.predict(PAIRS, batch_size=2), expected, atol=ATOL, rtol=0)
    assert type(ce.model).__name__ == "MAWForSequenceClassification"  # the CrossEncoder is left as it was
    np.testing.assert_allclose(_st_logits(ce), expected, atol=ATOL, rtol=0)

    # As from_pretrained: other settings apply to the carried parameters, another structure is refused
    weaker = encoder.maw_config.replace(maw_strength=0.2)
    converted = CrossEncoderWithMAW.from_sentence_transformers(ce, maw=weaker, device="cpu")
    np.testing.assert_allclose(converted.predict(PAIRS),
                               CrossEncoderWithMAW.from_pretrained(saved, maw=weaker, device="cpu").predict(PAIRS),
                               atol=ATOL, rtol=0)
    other = encoder.maw_config.replace(gating_mode="stat")
    with pytest.raises(MAWMismatchError, match="gating_mode gate -> stat"):
        CrossEncoderWithMAW.from_sentence_transformers(ce, maw=other, device="cpu")
    fresh = CrossEncoderWithMAW.from_sentence_transformers(ce, maw=other, fresh_maw=True, device="cpu")
    assert fresh.maw_config == other

    plain = CrossEncoderWithMAW.from_sentence_transformers(ce, maw=None, device="cpu")
    reference = CrossEncoderWithMAW.from_pretrained(folder, maw=None, device="cpu").predict(PAIRS)
    np.testing.assert_allclose(plain.predict(PAIRS), reference, atol=ATOL, rtol=0)
    # saved again, the folder is a portable checkpoint again
    again = back.save_pretrained(tmp_path / "again")
    np.testing.assert_allclose(_st_logits(st.CrossEncoder(str(again), trust_remote_code=True, device="cpu")),
                               expected, atol=ATOL, rtol=0)


def test_a_crossencoder_patched_by_the_package(folder):
    ce = st.CrossEncoder(str(folder), device="cpu")
    patch_model(ce.model, CONFIG)
    expected = _st_logits(ce)
    encoder = CrossEncoderWithMAW.from_sentence_transformers(ce, device="cpu")
    assert encoder.maw_config == CONFIG
    np.testing.assert_allclose(encoder.predict(PAIRS, batch_size=2), expected, atol=ATOL, rtol=0)


def test_not_a_crossencoder():
    with pytest.raises(TypeError, match="expected a sentence_transformers CrossEncoder"):
        CrossEncoderWithMAW.from_sentence_transformers(object())
    with pytest.raises(TypeError, match="maw must be a MAWConfig"):
        CrossEncoderWithMAW.from_sentence_transformers(object(), maw="stat")
