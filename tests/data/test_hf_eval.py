"""Hugging Face datasets as evaluation data (data/hf_eval.py, `dataset: hf:SPEC`): labeled and tuples rows ->
queries, documents, qrels and the dataset's own candidates; names, texts by id, and the one-line errors."""

from __future__ import annotations

import logging

import pytest

from maw_reranker.config.sections import dataset_from_options
from maw_reranker.data import DataFormatError, load_dataset
from maw_reranker.data.hf import parse_source
from maw_reranker.data.hf_eval import default_name, load_hf_eval
from maw_reranker.retrieve.candidates import resolve_candidates
from tests.data.fixtures import write_jsonl, write_parquet

LABELED = [{"query": "cats", "document": "cat text", "label": 1},
           {"query": "cats", "document": "dog text", "label": 0},
           {"query": "dogs", "document": "cat text", "label": 0},
           {"query": "dogs", "document": "dog text", "label": 2},
           {"query": "fish", "document": "cat text", "label": 0}]
TUPLES = [{"query": "cats", "positive": "cat text", "negatives": ["dog text", "fish text"]},
          {"query": "dogs", "positive": "dog text", "negatives": ["cat text", "fish text"]}]


def _by_text(ds):
    """qrels and candidates keyed by text, and the candidates' order."""
    queries, docs = ds.queries(), ds.docs()
    run = resolve_candidates(ds).run
    qrels = {queries[q]: {docs[d]: g for d, g in j.items()} for q, j in ds.qrels().items()}
    order = {queries[q]: [docs[d] for d in sorted(c, key=c.get, reverse=True)] for q, c in run.items()}
    return qrels, order


def test_labeled_rows_qrels_and_row_order_candidates(tmp_path, caplog):
    path = write_parquet(tmp_path / "eval.parquet", LABELED)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"hf:{path}")
    assert "1 queries without a relevant document (a label >= 1) are left out: fish" in caplog.text
    assert (ds.name, ds.slug, ds.kind, ds.split) == ("eval", "eval", "hf", None)
    assert ds.source == f"hf:{path}" and ds.measures == ["nDCG@10", "RR@10", "AP"]
    assert ds.queries() == {"q1": "cats", "q2": "dogs"}  # ids in order of first appearance, one per text
    qrels, order = _by_text(ds)
    assert qrels == {"cats": {"cat text": 1, "dog text": 0}, "dogs": {"cat text": 0, "dog text": 2}}
    assert order == {"cats": ["cat text", "dog text"], "dogs": ["cat text", "dog text"]}  # row order
    assert resolve_candidates(ds).source == {"kind": "dataset_candidates", "source": f"hf:{path}"}


def test_labeled_score_column_orders_the_candidates(tmp_path):
    rows = [dict(r, score=s) for r, s in zip(LABELED, [0.1, 0.9, 0.5, 0.2, 0.0])]
    ds = load_dataset(f"hf:{write_parquet(tmp_path / 'scored.parquet', rows)}", name="my set")
    assert ds.slug == "my_set"
    _, order = _by_text(ds)
    assert order == {"cats": ["dog text", "cat text"], "dogs": ["cat text", "dog text"]}
    bad = [dict(r, score=None if i == 1 else 1.0) for i, r in enumerate(LABELED)]
    with pytest.raises(DataFormatError, match=r"row 1 \(column 'score'\): score None is not a finite number"):
        load_dataset(f"hf:{write_jsonl(tmp_path / 'bad.jsonl', bad)}")


def test_labels_must_be_integer_grades(tmp_path):
    floats = [dict(r, label=float(r["label"])) for r in LABELED]  # 1.0, 0.0, 2.0: integer values are fine
    ds = load_dataset(f"hf:{write_parquet(tmp_path / 'f.parquet', floats)}")
    assert sorted(g for j in ds.qrels().values() for g in j.values()) == [0, 0, 1, 2]
    soft = [dict(r, label=0.7 if i == 0 else 0.0) for i, r in enumerate(LABELED)]
    with pytest.raises(DataFormatError, match=r"soft.parquet: row 0 \(column 'label'\): label 0.7 is not an integer "
                                              r"grade.*threshold or round"):
        load_dataset(f"hf:{write_parquet(tmp_path / 'soft.parquet', soft)}")


def test_repeated_pairs_follow_qrels_duplicates(tmp_path):
    path = write_parquet(tmp_path / "dup.parquet", LABELED + [{"query": "cats", "document": "dog text", "label": 1}])
    with pytest.raises(DataFormatError, match=r"row 5: query 'cats', document 'dog text' is judged again \(first in "
                                              r"row 1\); set qrels_duplicates: last"):
        load_dataset(f"hf:{path}")
    qrels, order = _by_text(load_dataset(f"hf:{path}", qrels_duplicates="last"))
    assert qrels["cats"] == {"cat text": 1, "dog text": 1} and order["cats"] == ["cat text", "dog text"]


def test_tuples_rows_positive_grade_1_and_a_fixed_shuffle(tmp_path):
    path = write_parquet(tmp_path / "tuples.parquet", TUPLES)
    ds = load_dataset(f"hf:{path}")
    qrels, order = _by_text(ds)
    assert qrels == {"cats": {"cat text": 1, "dog text": 0, "fish text": 0},
                     "dogs": {"dog text": 1, "cat text": 0, "fish text": 0}}
    assert all(sorted(o) == ["cat text", "dog text", "fish text"] for o in order.values())
    assert _by_text(load_dataset(f"hf:{path}"))[1] == order  # the same order every time
    many = [{"query": f"query {i}", "positive": f"pos {i}", "negatives": [f"neg {i} {j}" for j in range(5)]}
            for i in range(30)]
    _, order = _by_text(load_dataset(f"hf:{write_parquet(tmp_path / 'many.parquet', many)}"))
    firsts = [o[0] for o in order.values()]
    assert 0 < sum(f.startswith("pos") for f in firsts) < 15  # the positive is not always first


def test_tuples_rows_grouped_by_query_and_list_positives(tmp_path):
    rows = [{"query": "cats", "positive": ["cat text", "kitten text"], "negative_1": "dog text"},
            {"query": "cats", "positive": ["cat text"], "negative_1": "kitten text"},  # a positive stays positive
            {"query": "dogs", "positive": [], "negative_1": "dog text"}]  # no positive: left out
    qrels, order = _by_text(load_dataset(f"hf:{write_jsonl(tmp_path / 't.jsonl', rows)}"))
    assert qrels == {"cats": {"cat text": 1, "kitten text": 1, "dog text": 0}}
    assert sorted(order["cats"]) == ["cat text", "dog text", "kitten text"]


def test_texts_by_id_through_hf_queries_and_hf_corpus(tmp_path):
    rows = [{"query_id": "1", "document_id": "a", "label": 1}, {"query_id": "1", "document_id": "b", "label": 0}]
    path = write_parquet(tmp_path / "ids.parquet", rows)
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "1", "text": "cats"}])
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "title": "Cat", "text": "cat text"},
                                                     {"_id": "b", "text": "dog text"}, {"_id": "c", "text": "x"}])
    ds = load_dataset(f"hf:{path}", hf={"queries": str(queries), "corpus": str(corpus)})
    assert ds.queries() == {"1": "cats"} and ds.qrels() == {"1": {"a": 1, "b": 0}}
    assert dict(ds.docs().get_many(["a", "b", "c"])) == {"a": "Cat cat text", "b": "dog text"}  # the candidates'
    with pytest.raises(DataFormatError, match="column 'query_id' holds query ids, and nothing gives their texts: set "
                                              "hf_queries"):
        load_dataset(f"hf:{path}", hf={"corpus": str(corpus)})


def test_missing_columns_layouts_and_empty_data_fail_with_one_line(tmp_path):
    path = write_parquet(tmp_path / "eval.parquet", LABELED)
    with pytest.raises(DataFormatError, match=r"dataset hf:.*eval.parquet: no column 'grade' \(hf_columns: \{label: "
                                              r"grade\}\); its columns: query, document, label"):
        load_dataset(f"hf:{path}", hf={"columns": {"label": "grade"}})
    with pytest.raises(DataFormatError, match="no column for role 'positive' of layout tuples.*its columns: query, "
                                              "document, label"):
        load_dataset(f"hf:{path}", hf={"layout": "tuples"})
    scored = write_parquet(tmp_path / "s.parquet", [{"query": "q", "document_ids": ["a", "b"], "scores": [1.0, 0.5]}])
    with pytest.raises(DataFormatError, match="layout scored .* has no relevance labels"):
        load_dataset(f"hf:{scored}", hf={"corpus": str(scored)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataFormatError, match="empty.jsonl: no rows"):
        load_dataset(f"hf:{empty}")
    import datasets

    datasets.Dataset.from_dict({"query": [], "document": [], "label": []}).to_parquet(str(tmp_path / "none.parquet"))
    with pytest.raises(DataFormatError, match="none.parquet: no rows"):
        load_dataset(f"hf:{tmp_path / 'none.parquet'}")
    zeros = write_parquet(tmp_path / "zeros.parquet", [dict(r, label=0) for r in LABELED])
    with pytest.raises(DataFormatError, match=r"no query has a relevant document \(a label >= 1\)"):
        load_dataset(f"hf:{zeros}")
    with pytest.raises(FileNotFoundError, match="option 'dataset': file not found: .*missing.parquet"):
        load_dataset(f"hf:{tmp_path / 'missing.parquet'}")


def test_options_that_do_not_apply_and_names(tmp_path):
    path = write_parquet(tmp_path / "eval.parquet", LABELED)
    with pytest.raises(ValueError, match="option 'split' does not apply to a Hugging Face dataset .*use 'hf_split'"):
        load_dataset(f"hf:{path}", split="test")
    with pytest.raises(ValueError, match="option 'qrels' does not apply to a Hugging Face dataset"):
        load_dataset(f"hf:{path}", qrels=str(path))
    assert default_name(parse_source("org/name:cfg"), "test") == ("org/name:cfg", "test")
    folder = tmp_path / "rows"
    folder.mkdir()
    write_parquet(folder / "test.parquet", LABELED)
    ds = load_hf_eval(str(folder), split="test")
    assert (ds.name, ds.split, ds.slug) == ("rows", "test", "rows-test")


def test_eval_options_read_the_hf_section(tmp_path):
    from maw_reranker.experiments.eval_run import EvalOptions, input_files

    path = write_parquet(tmp_path / "eval.parquet", [{"q": r["query"], "d": r["document"], "g": r["label"]}
                                                     for r in LABELED])
    options = EvalOptions(model="m", dataset=f"hf:{path}", hf_columns={"query": "q", "document": "d", "label": "g"},
                          hf_layout="labeled", dataset_name="mine")
    ds = dataset_from_options(options)
    assert ds.name == "mine" and len(ds.qrels()) == 2
    assert list(input_files(options, "m")) == [f"dataset/{path}"]  # a changed file is not "the same run"
    with pytest.raises(ValueError, match="option 'hf_layout' applies to a Hugging Face dataset"):
        EvalOptions(model="m", dataset="scifact", hf_layout="labeled")
    with pytest.raises(ValueError, match="option 'hf_columns': unknown role 'querry'"):
        EvalOptions(model="m", dataset=f"hf:{path}", hf_columns={"querry": "q"})
