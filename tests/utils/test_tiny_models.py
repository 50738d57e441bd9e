"""The project-made tiny models and word tokenizer that the tests and the demo are built on."""

from transformers import AutoTokenizer

from maw_reranker.utils.tiny_models import save_tiny_cross_encoder, write_word_tokenizer


def test_word_tokenizer_keeps_its_vocabulary_after_reloading(tmp_path):
    # transformers 5 ignores `vocab_file`: every word then became [UNK] and no tiny model could learn anything.
    write_word_tokenizer(tmp_path, ["alpha", "Beta", "gamma"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 5 + 3
    assert tokenizer.tokenize("alpha beta gamma delta") == ["alpha", "beta", "gamma", "[UNK]"]
    ids = tokenizer("alpha", "gamma")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "alpha", "[SEP]", "gamma", "[SEP]"]


def test_tiny_cross_encoder_vocabulary_matches_its_tokenizer(tmp_path):
    from transformers import AutoConfig

    save_tiny_cross_encoder(tmp_path, ["w%d" % i for i in range(20)])
    assert AutoConfig.from_pretrained(tmp_path).vocab_size == len(AutoTokenizer.from_pretrained(tmp_path)) == 25
