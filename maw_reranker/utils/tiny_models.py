"""Tiny random-weight cross-encoders and a word-level tokenizer, built locally (no hub).

Used by the tests and by the offline demo. Weights are random, so scores are meaningless until trained; the
architecture and code paths are the real ones.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Iterable

import torch

TINY_ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "modernbert")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_config(model_type: str = "bert", vocab_size: int = 64, hidden_size: int = 32, num_layers: int = 2,
                num_heads: int = 4, initializer_range: float = 0.02, max_positions: int = 128, **overrides):
    """A small config of a supported architecture with one output label (a cross-encoder head)."""
    from transformers import AutoConfig

    if model_type == "modernbert":
        return _tiny_modernbert_config(vocab_size, hidden_size, num_layers, num_heads, initializer_range,
                                       max_positions, **overrides)
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, intermediate_size=hidden_size * 2, num_labels=1,
                  max_position_embeddings=max_positions, initializer_range=initializer_range,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    if model_type == "electra":
        common["embedding_size"] = hidden_size
    if model_type == "deberta-v2":
        common.update(relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                      max_relative_positions=max_positions, position_biased_input=False, type_vocab_size=0)
    if model_type in ("roberta", "xlm-roberta"):
        common.update(bos_token_id=2, eos_token_id=3, max_position_embeddings=max_positions + 2)
    common.update(overrides)
    return AutoConfig.for_model(model_type, **common)


# BERT-style option names that ModernBERT spells differently (so the same test options build every architecture).
_MODERNBERT_NAMES = {"attention_probs_dropout_prob": "attention_dropout", "hidden_dropout_prob": "mlp_dropout"}


def _tiny_modernbert_config(vocab_size, hidden_size, num_layers, num_heads, initializer_range, max_positions,
                            **overrides):
    """ModernBERT with global attention on every second layer starting at layer 0 ([global, local] for 2 layers)
    and a local window of 2 tokens each side (``local_attention=4``), shorter than the test sequences so the window
    matters; the rotary bases differ per layer type (160000 global, 10000 local), as in the released models."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, intermediate_size=hidden_size * 2, num_labels=1,
                  max_position_embeddings=max_positions, initializer_range=initializer_range,
                  pad_token_id=0, bos_token_id=2, cls_token_id=2, eos_token_id=3, sep_token_id=3,
                  local_attention=4, global_attn_every_n_layers=2, global_rope_theta=160000.0,
                  local_rope_theta=10000.0)
    common.update({_MODERNBERT_NAMES.get(k, k): v for k, v in overrides.items()})
    return AutoConfig.for_model("modernbert", **common)


def tiny_model(model_type: str = "bert", seed: int = 0, **kwargs):
    """A random-weight ``AutoModelForSequenceClassification`` (eval mode)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, **kwargs))
    return model.eval()


def write_word_tokenizer(directory: str | Path, words: Iterable[str], max_length: int = 128):
    """Save a BERT WordPiece tokenizer whose vocabulary is the special tokens plus ``words`` (lower-cased)."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    for word in words:
        word = word.lower()
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5.x
        tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True,
                                      model_max_length=max_length)
    else:  # transformers 4.x (5.x silently ignores vocab_file and keeps only the special tokens)
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=max_length)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"word tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_tiny_cross_encoder(directory: str | Path, words: Iterable[str], model_type: str = "bert", seed: int = 0,
                            **kwargs) -> Path:
    """Write a complete tiny cross-encoder directory (model + tokenizer) loadable by ``from_pretrained``."""
    directory = Path(directory)
    tokenizer = write_word_tokenizer(directory, words)
    model = tiny_model(model_type, seed=seed, vocab_size=len(tokenizer), **kwargs)
    model.save_pretrained(directory)
    return directory
