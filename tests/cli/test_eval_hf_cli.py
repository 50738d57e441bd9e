"""`maw-rerank eval --dataset hf:SPEC` and the same in a suite YAML: a tiny local parquet, the tiny model, metrics
files written and equal to what ir_measures computes on the same qrels and run."""

import json

import ir_measures
import pytest
import yaml

from maw_reranker.cli.main import main
from maw_reranker.data.trec import read_run
from tests.data.fixtures import DOCS, QRELS, QUERIES, write_parquet

TEXTS = {d: f"{title} {text}" for d, (title, text) in DOCS.items()}


@pytest.fixture()
def labeled(tmp_path):
    """One (query, document, label) row per query and document, in the fixtures' order: the ids the loader gives
    (q<N>, d<N> by first appearance) are the fixtures' own, so QRELS are the expected qrels."""
    rows = [{"question": QUERIES[q], "passage": TEXTS[d], "relevance": QRELS[q].get(d, 0)} for q in QUERIES
            for d in DOCS]
    return write_parquet(tmp_path / "dev rows.parquet", rows)


def test_eval_hf_labeled_metrics_match_ir_measures(labeled, model_dir, tmp_path, capsys):
    args = ["eval", "--dataset", f"hf:{labeled}", "--hf-layout", "labeled", "--model", model_dir, "--maw", "null",
            "--variant", "plain", "--output-dir", str(tmp_path / "exp"), "--progress", "false",
            "--standard-measures", "false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dev_rows / plain / seed 0: wrote" in out and "nDCG@10=" in out
    run_dir = tmp_path / "exp" / "dev_rows" / "plain" / "seed_0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "RR@10", "AP"}
    assert (run_dir / "per_query.json").is_file()
    run = read_run(run_dir / "run.trec")
    assert set(run) == set(QUERIES) and all(set(docs) == set(DOCS) for docs in run.values())
    expected = ir_measures.calc_aggregate([ir_measures.parse_measure("nDCG@10")], QRELS, run)
    assert metrics["nDCG@10"] == pytest.approx(list(expected.values())[0], abs=1e-9)
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["pool"] == {"kind": "dataset_candidates", "source": f"hf:{labeled}"}
    assert config["options"]["hf_layout"] == "labeled"
    assert main(args) == 0  # idempotent: the same run is complete already
    assert "complete already" in capsys.readouterr().out


def test_eval_hf_errors_are_one_line(labeled, model_dir, tmp_path, capsys):
    base = ["eval", "--model", model_dir, "--output-dir", str(tmp_path / "exp"), "--progress", "false"]
    assert main([*base, "--dataset", f"hf:{labeled}", "--hf-columns", "{label: grade}"]) == 1
    err = capsys.readouterr().err
    assert "no column 'grade'" in err and "its columns: question, passage, relevance" in err
    assert main([*base, "--dataset", "scifact", "--hf-layout", "tuples"]) in (1, 2)
    assert "option 'hf_layout' applies to a Hugging Face dataset" in capsys.readouterr().err


def test_suite_with_an_hf_tuples_dataset(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"anchor": QUERIES[q], "pos": TEXTS[next(iter(QRELS[q]))],
             "negs": [TEXTS[d] for d in DOCS if d not in QRELS[q]][:3]} for q in QUERIES]
    write_parquet(tmp_path / "tuples.parquet", rows)
    suite = {"name": "hf", "seeds": [0], "baseline": "plain",
             "datasets": [{"dataset": "hf:./tuples.parquet", "hf_columns": {"query": "anchor", "positive": "pos",
                                                                             "negatives": "negs"},
                           "dataset_name": "tiny-tuples"}],
             "variants": [{"name": "plain", "model": model_dir, "maw": None}],
             "overrides": {"progress": False, "standard_measures": False}}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    assert main(["suite", "--config", "suite.yaml"]) == 0
    assert "1 runs done" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "experiments/tiny-tuples/plain/seed_0/metrics.json").read_text())
    assert set(metrics) == {"nDCG@10", "RR@10", "AP"} and 0 <= metrics["nDCG@10"] <= 1
