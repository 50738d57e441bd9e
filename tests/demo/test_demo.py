"""The offline demo end to end, at reduced size: every stage runs and leaves its artifacts."""

import json

from maw_reranker.cli.main import main
from maw_reranker.demo.collection import generate
from maw_reranker.demo.pipeline import report, run_demo


def test_collection_is_deterministic_and_well_formed(tmp_path):
    a = generate(tmp_path / "a", n_topics=4)
    b = generate(tmp_path / "b", n_topics=4)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert (a / name).read_text() == (b / name).read_text()
    docs = [json.loads(line) for line in (a / "corpus.jsonl").read_text().splitlines()]
    assert len({d["_id"] for d in docs}) == len(docs) > 0
    test_qrels = (a / "qrels/test.tsv").read_text().splitlines()[1:]
    assert {line.split("\t")[2] for line in test_qrels} == {"1", "2"}


def test_demo_runs_end_to_end(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", seeds=(0, 1), train_steps=2, batch_size=32,
                      collection_size={"n_topics": 4, "facets": 2})
    assert 0.0 < result.bm25["nDCG@10"] <= 1.0
    summary = json.loads((result.summary_dir / "summary.json").read_text())
    text = json.dumps(summary)
    for variant in ("non_maw", "maw_zeroshot_stat", "maw_learned"):
        assert variant in text and variant in result.table
    assert "Wilcoxon" in result.table
    assert list(result.summary_dir.glob("*.png")), "plots are written"
    for variant in ("non_maw", "maw_learned"):
        for seed in (0, 1):
            run_dir = tmp_path / "demo" / "experiments" / "demo-test" / variant / f"seed_{seed}"
            assert (run_dir / "per_query.json").is_file()
            assert (run_dir / "run.trec").is_file()
    depth_log = tmp_path / "demo" / "experiments" / "demo-test" / "maw_learned" / "seed_0" / "depth_log.jsonl"
    row = json.loads(depth_log.read_text().splitlines()[0])
    assert row["layers"] and len(next(iter(row["layers"].values()))["weights"]) == 4
    out = report(result)
    assert "DEMO COLLECTION" in out and "maw-rerank suite" in out


def test_demo_cli_rejects_bad_options(capsys):
    assert main(["demo", "--train-steps", "0"]) == 1
    assert "train_steps" in capsys.readouterr().err
