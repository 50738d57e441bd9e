"""Every local text file: a UTF-8 byte-order mark is dropped, and bytes that are not UTF-8 are an error naming the
file and line (not a bare "'utf-8' codec can't decode byte 0xff")."""

from __future__ import annotations

import codecs
import json
import re

import pytest

from maw_reranker.data import DataFormatError, load_dataset, read_qrels, read_run
from tests.data.fixtures import write_beir, write_candidates_json, write_tsv_layout


def _tsv(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    docs, queries = paths["docs"], paths["queries"]
    return {
        "docs.tsv": (docs, lambda: dict(load_dataset(docs, queries=queries).iter_docs())),
        "queries.tsv": (queries, lambda: load_dataset(docs, queries=queries).queries()),
        "qrels.txt": (paths["qrels"], lambda: load_dataset(docs, queries=queries, qrels=paths["qrels"]).qrels()),
        "run.trec": (paths["run"], lambda: load_dataset(docs, queries=queries, run=paths["run"]).candidates()),
    }


def _beir(tmp_path):
    folder = write_beir(tmp_path / "toy")
    return {
        "corpus.jsonl": (folder / "corpus.jsonl", lambda: dict(load_dataset(folder).iter_docs())),
        "queries.jsonl": (folder / "queries.jsonl", lambda: load_dataset(folder).queries()),
        "qrels/test.tsv": (folder / "qrels" / "test.tsv", lambda: load_dataset(folder).qrels()),
    }


def _candidates(tmp_path):
    path = write_candidates_json(tmp_path / "BM25" / "c.json")
    path.write_text(json.dumps(json.loads(path.read_text()), indent=1))  # several lines, so line numbers mean something
    return {"c.json": (path, lambda: (load_dataset(path).queries(), load_dataset(path).candidates()))}


FILES = ["docs.tsv", "queries.tsv", "qrels.txt", "run.trec",  # docs file + queries + qrels + run
         "corpus.jsonl", "queries.jsonl", "qrels/test.tsv",  # BEIR folder
         "c.json"]  # RankLLM candidates


def _case(tmp_path, name):
    for make in (_tsv, _beir, _candidates):
        cases = make(tmp_path / make.__name__)
        if name in cases:
            return cases[name]
    raise KeyError(name)


@pytest.mark.parametrize("name", FILES)
def test_a_bom_is_dropped(tmp_path, name):
    path, read = _case(tmp_path, name)
    expected = read()
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    assert read() == expected


@pytest.mark.parametrize("name", FILES)
def test_undecodable_bytes_name_file_and_line(tmp_path, name):
    path, read = _case(tmp_path, name)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:3] + b"\xff" + lines[2][3:]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: not valid UTF-8: byte 0xff at byte 4 of the line")):
        read()


def test_the_bad_line_is_found_past_the_first_chunk(tmp_path):
    # Text is decoded in chunks of several KB: the error must still name the line, not the chunk.
    path = tmp_path / "run.trec"
    lines = [f"q{i} Q0 d{i} 1 1.0 x".encode() for i in range(4000)]
    lines[3210] = b"q3210 Q0 d\xe9 1 1.0 x"  # Latin-1 e-acute
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3211: not valid UTF-8: byte 0xe9 at byte 11")):
        read_run(path)


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_bytes("q1 0 d1 1\n".encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"qrels.txt:1: not valid UTF-8.*the file is UTF-16"):
        read_qrels(path)


def test_line_helpers(tmp_path):
    from maw_reranker.data.readers import iter_lines, read_text

    path = tmp_path / "x.txt"
    path.write_bytes(codecs.BOM_UTF8 + "a\r\nb\u2028c\n\nd".encode())
    # Split at \n only (U+2028 is no line break for a TSV), endings and the BOM dropped.
    assert list(iter_lines(path)) == [(1, "a"), (2, "b\u2028c"), (3, ""), (4, "d")]
    assert read_text(path) == "a\r\nb\u2028c\n\nd"
    path.write_bytes(b'[\n  "ok",\n  "\xc3"\n]')
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: not valid UTF-8: byte 0xc3 at byte 4")):
        read_text(path)
