import json

import ir_datasets
import pytest

from maw_reranker.data import DataFormatError, load_dataset
from tests.data.fixtures import DOCS, QRELS, QUERIES, write_beir, write_candidates_json, write_tsv_layout


def test_beir_folder(tmp_path):
    ds = load_dataset(write_beir(tmp_path / "toy"))
    assert ds.name == "toy" and ds.split == "test" and ds.measures == ["nDCG@10", "R@100"]
    assert ds.queries() == QUERIES  # the split's queries: those its qrels judge
    assert ds.qrels() == QRELS
    docs = ds.docs()
    assert len(docs) == len(DOCS) and docs["d1"] == f"{DOCS['d1'][0]} {DOCS['d1'][1]}"
    assert docs.get_many(["d2", "nope"]) == {"d2": f"{DOCS['d2'][0]} {DOCS['d2'][1]}"}
    with pytest.raises(KeyError):
        docs["nope"]
    assert dict(ds.iter_docs()) == dict(docs.items())
    assert ds.candidates() is None
    # Registered with ir_datasets, so ir_datasets tooling sees the same data.
    irds = ir_datasets.load(ds.irds_id)
    assert ds.irds_id.startswith("maw-local/toy-test")
    assert {q.query_id for q in irds.queries_iter()} == set(QUERIES)


def test_beir_split_choice(tmp_path):
    folder = write_beir(tmp_path / "toy", train_qrels=True)
    assert load_dataset(folder, split="train").queries() == {"q-train": "an unjudged training query about cats"}
    with pytest.raises(FileNotFoundError, match="dev.tsv.*splits here: test, train"):
        load_dataset(folder, split="dev")


def test_tsv_layout_with_run(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    ds = load_dataset(paths["docs"], queries=paths["queries"], qrels=paths["qrels"], run=paths["run"])
    assert ds.name == "set"  # docs.tsv is generic, so the folder names it
    assert ds.queries() == QUERIES and ds.qrels() == QRELS
    assert ds.docs()["d4"].startswith("Python The Python programming")
    assert ds.candidates() == {"q1": {"d2": 3.5, "d1": 2.0}, "q2": {"d2": 9.0}}
    plain = load_dataset(paths["docs"], queries=paths["queries"], name="plain")
    assert plain.name == "plain" and plain.qrels() == {} and plain.candidates() is None


def test_candidates_json(tmp_path):
    path = write_candidates_json(tmp_path / "BM25" / "retrieve_results_toy.json")
    qrels = write_tsv_layout(tmp_path / "set")["qrels"]
    ds = load_dataset(path, qrels=qrels, measures=["nDCG@10", "RR(rel=2)@10"])
    assert ds.name == "BM25-retrieve_results_toy"
    assert ds.queries() == {q: QUERIES[q] for q in ["q1", "q2", "q3"]}
    assert ds.candidates()["q2"] == {"d1": 9.0, "d2": 8.0, "d3": 7.0}
    assert ds.docs()["d3"].startswith("Photosynthesis")
    assert ds.qrels() == QRELS and ds.measures[1] == "RR(rel=2)@10"


def _error(excinfo) -> str:
    return str(excinfo.value)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    folder = write_beir(tmp_path / "toy")
    corpus = folder / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    lines[2] = '{"_id": "d3", "text": '
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        list(load_dataset(folder).iter_docs())
    assert f"{corpus}:3: invalid JSON" in _error(err)


def test_duplicate_doc_and_query_ids(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    with paths["docs"].open("a") as f:
        f.write("d2\tagain\tduplicate\n")
    with pytest.raises(DataFormatError, match=r"docs.tsv:7: duplicate doc id 'd2' \(first seen on line 2\)"):
        load_dataset(paths["docs"], queries=paths["queries"]).docs()["d1"]
    paths["queries"].write_text("q1\tone\nq1\ttwo\n")
    with pytest.raises(DataFormatError, match="queries.tsv:2: duplicate query id 'q1'"):
        load_dataset(paths["docs"], queries=paths["queries"]).queries()


def test_empty_corpus_and_bad_columns(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    paths["docs"].write_text("\n")
    with pytest.raises(DataFormatError, match="docs.tsv: no docs found"):
        list(load_dataset(paths["docs"], queries=paths["queries"]).iter_docs())
    paths["docs"].write_text("d1\ta\tb\tc\n")
    with pytest.raises(DataFormatError, match="docs.tsv:1: expected"):
        list(load_dataset(paths["docs"], queries=paths["queries"]).iter_docs())
    paths["queries"].write_text("q1 without a tab\n")
    with pytest.raises(DataFormatError, match="queries.tsv:1: expected 'id<TAB>text'"):
        load_dataset(write_tsv_layout(tmp_path / "s2")["docs"], queries=paths["queries"]).queries()


def test_bad_qrels_and_run_lines(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    paths["qrels"].write_text("q1 0 d1 1\nq1 0 d2\n")
    ds = load_dataset(paths["docs"], queries=paths["queries"], qrels=paths["qrels"])
    with pytest.raises(DataFormatError, match=r"qrels.txt:2: "):
        ds.qrels()
    paths["run"].write_text("q1 Q0 d1 1 1.0 x\nq1 Q0 d1 2 0.5 x\n")
    ds = load_dataset(paths["docs"], queries=paths["queries"], run=paths["run"])
    with pytest.raises(DataFormatError, match=r"run.trec:2: duplicate document 'd1'"):
        ds.candidates()
    # A run's documents missing from the corpus are left to the reranker's on_missing policy (error or skip),
    # as for any other candidates (tests/cli/test_errors.py::test_on_missing_skip_applies_to_a_dataset_run).
    paths["run"].write_text("q1 Q0 d99 1 1.0 x\n")
    assert load_dataset(paths["docs"], queries=paths["queries"], run=paths["run"]).candidates() == {"q1": {"d99": 1.0}}
    for line, problem in (("q1 Q0 d1 one 1.0 x", "rank is not an integer"), ("q1 Q0 d1 1 nan x", "score is not a finite number"),
                          ("q1 Q0 d1 1 abc x", "score is not a number")):
        paths["run"].write_text(line + "\n")
        with pytest.raises(DataFormatError, match=f"run.trec:1: {problem}"):
            load_dataset(paths["docs"], queries=paths["queries"], run=paths["run"]).candidates()


def test_bad_candidates_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"query": "x", "hits": [\n{"qid": "1", "docid": "a", "content": "t", "score": 1},\n]}]')
    with pytest.raises(DataFormatError, match=r"c.json:3: invalid JSON"):
        load_dataset(path).queries()
    hits = [{"qid": "1", "docid": "a", "content": "t", "score": 1}] * 2
    path.write_text(json.dumps([{"query": "x", "hits": hits}]))
    with pytest.raises(DataFormatError, match="entry 0, hit 1: duplicate document 'a'"):
        load_dataset(path).candidates()
    path.write_text(json.dumps([{"query": "x", "hits": hits[:1]}, {"query": "y", "hits": hits[:1]}]))
    with pytest.raises(DataFormatError, match="entry 1: duplicate query id '1'"):
        load_dataset(path).queries()


def test_missing_files_and_misused_options(tmp_path):
    paths = write_tsv_layout(tmp_path / "set")
    with pytest.raises(ValueError, match="option 'queries' is required"):
        load_dataset(paths["docs"])
    with pytest.raises(FileNotFoundError, match="qrels file not found: .*missing.txt"):
        load_dataset(paths["docs"], queries=paths["queries"], qrels=tmp_path / "missing.txt")
    (tmp_path / "notbeir").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus.jsonl is missing"):
        load_dataset(tmp_path / "notbeir")
    with pytest.raises(ValueError, match="option 'split'"):
        load_dataset(paths["docs"], split="test", queries=paths["queries"])
    with pytest.raises(FileNotFoundError, match="missing queries"):
        load_dataset(write_beir(tmp_path / "b2", train_qrels=False) / "corpus.jsonl", queries=tmp_path / "missing queries")
