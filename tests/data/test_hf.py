"""Hugging Face datasets as a source (data/hf.py): source specs, local parquet/jsonl/csv files, column roles and
layouts, id -> text tables, and the one-line errors (missing column, missing file, hub offline)."""

from __future__ import annotations

import pytest

from maw_reranker.data import DataFormatError, DatasetDownloadError
from maw_reranker.data.hf import (HFTexts, TextIds, check_roles, column_names, id_columns, load_hf, load_texts,
                                  parse_source, resolve_columns)
from tests.data.fixtures import write_jsonl, write_parquet

TUPLES = [{"query": "apple story", "positive": "apple text", "negatives": ["river text", "tiger text"]},
          {"query": "river story", "positive": "river text", "negatives": ["apple text"]}]


def test_parse_source_hub_ids_and_configs():
    src = parse_source("lightonai/ms-marco-en-bge:train")
    assert (src.path, src.name, src.files, src.local) == ("lightonai/ms-marco-en-bge", "train", (), False)
    assert parse_source("org/name").name is None
    assert parse_source("org/name:cfg").label == "org/name:cfg"
    with pytest.raises(ValueError, match="option 'hf_dataset' is empty"):
        parse_source("  ")


def test_parse_source_local_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", TUPLES)
    b = write_jsonl(tmp_path / "b.jsonl", TUPLES)
    src = parse_source(f"{a},{b}")
    assert src.builder == "json" and src.files == (str(a), str(b)) and src.local
    assert parse_source(str(tmp_path)).files == ()  # a folder: datasets infers the format
    with pytest.raises(FileNotFoundError, match="option 'hf_dataset': file not found: .*missing.parquet"):
        parse_source(str(tmp_path / "missing.parquet"))
    c = tmp_path / "c.csv"
    c.write_text("query,document,label\nq,d,1\n")
    with pytest.raises(ValueError, match="all of one format"):
        parse_source(f"{a},{c}")


def test_local_paths_that_do_not_exist_are_not_found_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec, shown in (("./data", "./data"), ("../data", "../data"), ("data/train/rows", "data/train/rows"),
                        ("~/no-such-folder-here", "/.*/no-such-folder-here"), ("/no/such/folder", "/no/such/folder")):
        with pytest.raises(FileNotFoundError, match=f"option 'hf_dataset': folder or file not found: {shown} "):
            parse_source(spec)
    with pytest.raises(FileNotFoundError, match="option 'hf_corpus': file not found: data/rows.jsonl"):
        parse_source("data/rows.jsonl", "hf_corpus")
    assert not parse_source("org/name").local and parse_source("org/name:cfg").name == "cfg"  # ORG/NAME: the hub
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", TUPLES)
    assert parse_source("data").local and parse_source("./data").path == "./data"  # an existing folder is local


def test_hf_split_picks_the_split_of_a_folder(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    write_parquet(folder / "train.parquet", TUPLES)
    write_parquet(folder / "test.parquet", TUPLES[:1])
    source = parse_source(str(folder))
    assert len(load_hf(source, "train")) == 2 and len(load_hf(source, "test")) == 1
    with pytest.raises(DataFormatError, match="rows: cannot be read .*Unknown split"):
        load_hf(source, "dev")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "tsv"])
def test_load_local_files(tmp_path, fmt):
    rows = [{"query": "q1", "document": "d1", "label": 1}, {"query": "q1", "document": "d2", "label": 0}]
    path = tmp_path / f"rows.{fmt}"
    if fmt == "parquet":
        write_parquet(path, rows)
    elif fmt == "jsonl":
        write_jsonl(path, rows)
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(sep.join(rows[0]) + "\n" + "".join(sep.join(str(v) for v in r.values()) + "\n" for r in rows))
    ds = load_hf(parse_source(str(path)))
    assert column_names(ds) == ["query", "document", "label"]
    assert [r["document"] for r in ds] == ["d1", "d2"] and int(ds[0]["label"]) == 1
    stream = load_hf(parse_source(str(path)), streaming=True)
    assert [r["document"] for r in stream] == ["d1", "d2"]
    assert column_names(stream) == ["query", "document", "label"]


def test_bad_local_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"query": "q"}\n{not json\n')
    with pytest.raises(DataFormatError, match="broken.jsonl"):
        load_hf(parse_source(str(path)))


def test_hub_offline_is_one_line(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetDownloadError, match="'no-such-org/no-such-dataset:cfg' .*offline\\?"):
        load_hf(parse_source("no-such-org/no-such-dataset:cfg"))


def test_layouts_are_told_from_the_columns():
    assert resolve_columns(["query", "positive", "negatives"], {}, "auto", "x").layout == "tuples"
    cols = resolve_columns(["query", "positive", "negative_2", "negative_1", "negative_10"], {}, "auto", "x")
    assert cols.layout == "tuples" and cols.roles["negatives"] == ["negative_1", "negative_2", "negative_10"]
    scored = resolve_columns(["query_id", "document_ids", "scores"], {}, "auto", "x")
    assert scored.layout == "scored" and scored.roles == {"query": "query_id", "documents": "document_ids",
                                                          "scores": "scores"}
    labeled = resolve_columns(["query", "passage", "label", "score"], {}, "auto", "x")
    assert labeled.layout == "labeled" and labeled.roles["document"] == "passage" and labeled.roles["score"] == "score"
    mapped = resolve_columns(["q", "pos", "negs", "ps", "ns"], {"query": "q", "positive": "pos", "negatives": "negs",
                                                                "positive_score": "ps", "negative_scores": "ns"},
                             "auto", "x")
    assert mapped.layout == "tuples" and mapped.roles["negative_scores"] == "ns"


def test_one_column_fills_one_role():
    # label mapped to the column "score": the score role must not take it too (it would be the label and the
    # teacher's score at once)
    cols = resolve_columns(["query", "document", "score"], {"label": "score"}, "auto", "x")
    assert cols.layout == "labeled" and cols.roles == {"query": "query", "document": "document", "label": "score"}
    # a mapped column is not auto-detected for its usual role either
    cols = resolve_columns(["query", "text", "passage", "grade"], {"document": "text"}, "auto", "x")
    assert cols.roles == {"query": "query", "document": "text", "label": "grade"}
    mapped = resolve_columns(["q", "document", "label"], {"query": "q", "document": "document"}, "auto", "x")
    assert mapped.roles == {"query": "q", "document": "document", "label": "label"}
    with pytest.raises(DataFormatError, match="my.parquet: column 'q' is mapped to two roles, 'query' and "
                                              "'document' \\(hf_columns\\)"):
        resolve_columns(["q", "label"], {"query": "q", "document": "q"}, "auto", "my.parquet")


def test_a_mapped_role_the_layout_does_not_use_is_an_error():
    with pytest.raises(DataFormatError, match="my.parquet: hf_columns maps role 'score' \\(column 's'\\), which "
                                              "layout tuples does not use"):
        resolve_columns(["query", "positive", "negatives", "s"], {"score": "s"}, "auto", "my.parquet")
    with pytest.raises(DataFormatError, match="maps role 'scores' \\(column 'ts'\\), which layout labeled does "
                                              "not use"):
        resolve_columns(["query", "document", "label", "ts"], {"scores": "ts"}, "labeled", "my.parquet")
    # the table roles map the columns of hf_queries / hf_corpus, not of the rows
    assert resolve_columns(["query_id", "document_ids", "scores"], {"queries_text": "text", "corpus_id": "_id"},
                           "auto", "x").layout == "scored"


def test_id_columns_are_told_by_name_only():
    scored = resolve_columns(["query_id", "document_ids", "scores"], {}, "auto", "x")
    assert id_columns(scored) == {"queries": ["query_id"], "documents": ["document_ids"]}
    tuples = resolve_columns(["query", "positive_id", "negative_ids"], {}, "auto", "x")
    assert id_columns(tuples) == {"queries": [], "documents": ["positive_id", "negative_ids"]}
    texts = resolve_columns(["q", "pos", "negs"], {"query": "q", "positive": "pos", "negatives": "negs"}, "auto", "x")
    assert id_columns(texts) == {"queries": [], "documents": []}


def test_column_errors_name_the_role_column_and_dataset():
    with pytest.raises(DataFormatError, match="my.parquet: cannot tell its layout from its columns \\(a, b\\)"):
        resolve_columns(["a", "b"], {}, "auto", "my.parquet")
    with pytest.raises(DataFormatError, match="my.parquet: no column 'qq' \\(hf_columns: \\{query: qq\\}\\); its "
                                              "columns: query, positive, negatives"):
        resolve_columns(["query", "positive", "negatives"], {"query": "qq"}, "auto", "my.parquet")
    with pytest.raises(DataFormatError, match="no column for role 'label' of layout labeled"):
        resolve_columns(["query", "document"], {}, "labeled", "my.parquet")
    with pytest.raises(ValueError, match="unknown role 'querry'"):
        check_roles({"querry": "q"})
    with pytest.raises(ValueError, match="role 'query' needs a column name"):
        check_roles({"query": ["a", "b"]})


def test_id_text_tables(tmp_path):
    path = write_parquet(tmp_path / "corpus.parquet", [{"document_id": "d1", "title": "T", "text": "one"},
                                                       {"document_id": "d2", "title": "", "text": "two"}])
    texts = load_texts(str(path), "train", {}, "corpus", "hf_corpus")
    assert isinstance(texts, HFTexts) and len(texts) == 2 and "d1" in texts and "d9" not in texts
    assert texts["d1"] == "T one" and texts.get_many(["d2", "d9", "d1"]) == {"d2": "two", "d1": "T one"}
    queries = write_parquet(tmp_path / "q.parquet", [{"qid": 1, "question": "what"}])
    q = load_texts(str(queries), "train", {"queries_text": "question"}, "queries", "hf_queries")
    assert q["1"] == "what"
    with pytest.raises(DataFormatError, match="no text column"):
        load_texts(str(queries), "train", {}, "queries", "hf_queries")
    dup = write_parquet(tmp_path / "dup.parquet", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(DataFormatError, match="duplicate id 'a'"):
        load_texts(str(dup), "train", {}, "corpus", "hf_corpus")


def test_text_ids_are_the_texts():
    t = TextIds()
    assert t["some text"] == "some text" and t.get_many(["a", "b"]) == {"a": "a", "b": "b"}


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "empty.parquet", "header.csv", "folder"])
@pytest.mark.parametrize("streaming", [False, True])
def test_a_source_without_rows_says_so(tmp_path, name, streaming):
    import datasets

    path = tmp_path / name
    if name == "empty.parquet":
        datasets.Dataset.from_dict({"query": [], "positive": []}).to_parquet(str(path))
    elif name == "folder":
        path.mkdir()
        (path / "train.jsonl").write_text("")
    else:
        path.write_text({"empty.jsonl": "", "blank.jsonl": "\n  \n", "header.csv": "query,positive\n"}[name])
    match = f"{name}: no rows" + (" \\(split train\\)" if name == "folder" else "") + "$"
    with pytest.raises(DataFormatError, match=match):
        load_hf(parse_source(str(path)), streaming=streaming)
