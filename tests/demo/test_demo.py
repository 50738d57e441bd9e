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


def test_tiny_cross_encoder_learns_the_demo_task(tmp_path):
    """Guards the demo's point: 60 training steps take the random-init model from chance to above BM25.
    (It failed silently once, when the word tokenizer lost its vocabulary and every word was [UNK].)"""
    from maw_reranker import CrossEncoderWithMAW
    from maw_reranker.data import load_dataset, read_run
    from maw_reranker.demo.collection import vocabulary
    from maw_reranker.demo.pipeline import TINY, _train
    from maw_reranker.evaluate.metrics import evaluate_run
    from maw_reranker.retrieve import build_pool
    from maw_reranker.utils.tiny_models import save_tiny_cross_encoder

    collection = generate(tmp_path / "c", n_topics=6)
    base = save_tiny_cross_encoder(tmp_path / "base", vocabulary(collection), seed=0, **TINY)
    test = load_dataset(str(collection), split="test", name="demo")
    pool = read_run(build_pool(test, engine="bm25s", k=100, pools_dir=tmp_path / "pools"))
    build_pool(load_dataset(str(collection), split="train", name="demo"), engine="bm25s", k=100,
               pools_dir=tmp_path / "pools")
    docs, queries = dict(test.iter_docs()), test.queries()

    def ndcg(run):
        return evaluate_run(run, test.qrels(), ["nDCG@10"]).aggregate["nDCG@10"]

    def rerank(model_dir):
        model = CrossEncoderWithMAW.from_pretrained(str(model_dir), maw=None)
        run = {}
        for qid, candidates in pool.items():
            ids = list(candidates)
            run[qid] = dict(zip(ids, map(float, model.predict([(queries[qid], docs[d]) for d in ids]))))
        return run

    before = ndcg(rerank(base))
    after = ndcg(rerank(_train(base, collection, tmp_path / "models" / "m", None, 0, 60)))
    assert after > before + 0.2, (before, after)
    assert after > ndcg(pool), (after, ndcg(pool))
