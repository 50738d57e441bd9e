"""MAWReranker with the real PyTerrier: a pt.Experiment over a candidates frame gives the nDCG@10 that
`maw-rerank eval` gives on the same candidates written as files; ranks, depth columns, validation; no Java."""

from __future__ import annotations

import json

import numpy as np
import pytest

pt = pytest.importorskip("pyterrier")
pd = pytest.importorskip("pandas")

from ir_measures import RR, nDCG  # noqa: E402

from maw_reranker.cross_encoder.model import CrossEncoderWithMAW  # noqa: E402
from maw_reranker.data.load import load_dataset  # noqa: E402
from maw_reranker.experiments.eval_run import EvalOptions, run_eval  # noqa: E402
from maw_reranker.integrations.pyterrier import MAWReranker  # noqa: E402
from maw_reranker.maw.config import MAWConfig  # noqa: E402
from tests.data.fixtures import DOCS, QRELS, QUERIES, write_tsv_layout  # noqa: E402

MAW = {"depth_dim": 2, "gating_mode": "stat", "maw_strength": 0.5}


@pytest.fixture()
def collection(tmp_path):
    """Every document a candidate of every query, with distinct first-stage scores, as files and as a frame."""
    paths = write_tsv_layout(tmp_path / "col")
    lines = [f"{q} Q0 {d} {r} {100 - 7 * r - i:.1f} bm25" for i, q in enumerate(QUERIES)
             for r, d in enumerate(sorted(DOCS, key=lambda d: (sum(map(ord, q + d)) % 7, d)), 1)]
    paths["run"].write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(paths["docs"]), queries=str(paths["queries"]), qrels=str(paths["qrels"]),
                      run=str(paths["run"]), name="tiny")
    queries, docs = ds.queries(), ds.docs()
    rows = []
    for line in lines:
        q, _, d, r, s, _ = line.split()
        rows.append({"qid": q, "query": queries[q], "docno": d, "text": docs[d], "score": float(s), "rank": int(r) - 1})
    return paths, pd.DataFrame(rows)


def _qrels_frame():
    return pd.DataFrame([{"qid": q, "docno": d, "label": g} for q, docs in QRELS.items() for d, g in docs.items()])


def test_experiment_ndcg_equals_maw_rerank_eval(collection, model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # eval's run folder goes under the working folder
    paths, candidates = collection
    outcome = run_eval(EvalOptions(dataset=str(paths["docs"]), queries=str(paths["queries"]),
                                   qrels=str(paths["qrels"]), run=str(paths["run"]), dataset_name="tiny",
                                   model=model_dir, maw=MAW, progress=False,
                                   standard_measures=False, measures=["nDCG@10", "RR@10"], plots=False))
    expected = json.loads((outcome.run_dir / "metrics.json").read_text())

    reranker = MAWReranker(model_dir, maw=MAWConfig(**MAW), device="cpu", batch_size=4)
    topics = candidates[["qid", "query"]].drop_duplicates().reset_index(drop=True)
    pipeline = pt.Transformer.from_df(candidates) >> reranker
    table = pt.Experiment([pipeline], topics, _qrels_frame(), eval_metrics=[nDCG @ 10, RR @ 10], names=["maw"])
    got = table.set_index("name").loc["maw"]
    assert got["nDCG@10"] == pytest.approx(expected["nDCG@10"], abs=1e-9)
    assert got["RR@10"] == pytest.approx(expected["RR@10"], abs=1e-9)
    assert not pt.java.started()  # the Python side only: no JVM

    # the same scores as the package's run file (scores.tsv), and PyTerrier's ranks from them
    scored = reranker(candidates)
    written = pd.read_csv(outcome.run_dir / "scores.tsv", sep="\t", dtype={"qid": str, "docid": str})
    merged = scored.merge(written, left_on=["qid", "docno"], right_on=["qid", "docid"], suffixes=("", "_eval"))
    assert len(merged) == len(candidates)
    np.testing.assert_allclose(merged["score"], merged["score_eval"], rtol=1e-6, atol=1e-6)
    for _, group in scored.groupby("qid"):
        assert sorted(group["rank"]) == list(range(len(group)))
        best = group.sort_values("score", ascending=False)
        assert best["rank"].iloc[0] == 0


def test_depth_columns_precision_and_kept_columns(collection, model_dir):
    _, candidates = collection
    model = CrossEncoderWithMAW.from_pretrained(model_dir, maw=MAWConfig(**MAW), device="cpu")
    out = MAWReranker(model, depth_log=True, batch_size=3)(candidates.assign(extra=1))
    weights = [c for c in out.columns if c.startswith("maw_depth_weights_")]
    selected = [c for c in out.columns if c.startswith("maw_selected_depth_")]
    assert len(weights) == len(selected) == 1 and (out["extra"] == 1).all()
    stacked = np.stack(out[weights[0]].to_numpy())
    assert stacked.shape == (len(candidates), 2) and np.allclose(stacked.sum(1), 1.0, atol=1e-5)
    assert set(out[selected[0]]) <= {0, 1}
    expected = model.predict(list(zip(candidates["query"], candidates["text"])))
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    plain = MAWReranker(model_dir, maw=None, device="cpu", depth_log=True)(candidates)
    assert not any(c.startswith("maw_") for c in plain.columns)  # no MAW layers: no depth columns


def test_input_is_validated(collection, model_dir):
    _, candidates = collection
    reranker = MAWReranker(model_dir, maw=None, device="cpu")
    with pytest.raises(pt.validate.InputValidationError):
        reranker(candidates.drop(columns=["text"]))
    broken = candidates.copy()
    broken.loc[0, "text"] = None
    with pytest.raises(ValueError, match="no query or no 'text'"):
        reranker(broken)
    empty = reranker(candidates.iloc[:0])
    assert list(empty.columns)[-2:] == ["score", "rank"] and empty.empty
    with pytest.raises(ValueError, match="precision"):
        MAWReranker(reranker.model, precision="fp8")
