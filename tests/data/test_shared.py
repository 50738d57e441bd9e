"""The real offline data in ../shared/data (skipped when absent)."""

import pytest

from maw_reranker.data import load_dataset

pytestmark = pytest.mark.shared_data


def test_scifact_beir_folder(shared_data):
    ds = load_dataset(shared_data / "scifact", split="test")
    assert len(ds.queries()) == 300
    assert sum(len(v) for v in ds.qrels().values()) == 339
    docs = ds.docs()
    assert len(docs) == 5183
    assert docs["4983"].startswith("Microstructural development of human newborn cerebral white matter")


def test_dl19_rankllm_candidates_reproduce_bm25(shared_data):
    import ir_measures

    root = shared_data / "trec-dl-2019-passage"
    ds = load_dataset(root / "rank_llm" / "BM25" / "retrieve_results_dl19.json", qrels=root / "qrels.dl19-passage.txt",
                      measures=["nDCG@10", "RR(rel=2)@10", "R(rel=2)@100"])
    run = ds.candidates()
    assert len(ds.queries()) == 43 and all(len(hits) == 100 for hits in run.values())
    scores = ir_measures.calc_aggregate([ir_measures.parse_measure(m) for m in ds.measures], ds.qrels(), run)
    assert {str(m): round(v, 4) for m, v in scores.items()} == {
        "nDCG@10": 0.5058, "RR(rel=2)@10": 0.7024, "R(rel=2)@100": 0.4910}
