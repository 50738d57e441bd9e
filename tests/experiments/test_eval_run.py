"""One eval run end to end (artifacts, metrics = evaluate_run, idempotence, bad input) and suites with summaries."""

import json
import logging
from pathlib import Path

import pytest

from maw_reranker.data.trec import read_qrels, read_run
from maw_reranker.experiments import eval_run as eval_run_mod
from maw_reranker.evaluate.artifacts import RunArtifacts
from maw_reranker.evaluate.metrics import evaluate_run
from maw_reranker.evaluate.rerank import RerankError
from maw_reranker.config.maw_spec import parse_maw, with_run_seed
from maw_reranker.experiments.eval_run import EvalOptions, RunConflictError, run_eval
from maw_reranker.experiments.suite import run_suite
from tests.data.fixtures import DOCS, QUERIES, write_beir, write_tsv_layout

MEASURES = ["nDCG@10", "RR@10"]


@pytest.fixture()
def collection(tmp_path):
    """TSV layout whose run holds every doc for every query, plus an extra query that has no qrels."""
    paths = write_tsv_layout(tmp_path / "col")
    paths["queries"].write_text(paths["queries"].read_text() + "q9\tan unjudged query about cats\n")
    paths["run"].write_text("".join(f"{q} Q0 {d} {r} {10 - r} bm25\n" for q in [*QUERIES, "q9"]
                                    for r, d in enumerate(DOCS, 1)))
    return paths


def options(collection, model_dir, out, **kw):
    base = dict(dataset=str(collection["docs"]), queries=str(collection["queries"]), qrels=str(collection["qrels"]),
                run=str(collection["run"]), dataset_name="tiny", model=model_dir, output_dir=str(out), progress=False,
                standard_measures=False, measures=MEASURES, plots=False)
    base.update(kw)
    return EvalOptions(**base)


def test_eval_writes_artifacts_and_metrics_match_evaluate_run(collection, model_dir, tmp_path, caplog):
    maw = {"depth_dim": 2, "gating_mode": "uniform", "maw_strength": 0.5}
    with caplog.at_level(logging.WARNING):
        out = run_eval(options(collection, model_dir, tmp_path / "exp", maw=maw, variant="v", seed=3, depth=4,
                               plots=True))
    assert "without qrels" in caplog.text and "q9" in caplog.text  # unjudged query: a logged skip
    d = tmp_path / "exp" / "tiny" / "v" / "seed_3"
    assert out.status == "done" and out.run_dir == d and RunArtifacts(d).is_complete()
    config = json.loads((d / "config.json").read_text())
    assert {"git", "packages", "system"} <= set(config)
    assert config["config"]["maw"]["depth_dim"] == 2 and config["config"]["maw"]["maw_random_seed"] == 3
    run = read_run(d / "run.trec")
    assert set(run) == {*QUERIES, "q9"} and all(len(v) == 4 for v in run.values())
    expected = evaluate_run(run, read_qrels(collection["qrels"]), MEASURES)
    metrics = json.loads((d / "metrics.json").read_text())
    per_query = json.loads((d / "per_query.json").read_text())
    assert metrics == pytest.approx(expected.aggregate, abs=1e-6) and metrics == out.metrics
    for m in MEASURES:
        assert per_query[m] == pytest.approx(expected.per_query[m], abs=1e-6)
    assert json.loads((d / "eval_info.json").read_text())["skipped_unjudged"] == ["q9"]
    lines = (d / "scores.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["qid", "docid", "score", "first_stage_rank", "first_stage_score"]
    assert len(lines) == 1 + 4 * 6
    first = lines[1].split("\t")
    assert first[0] == "q1" and first[1] == "d1" and first[3] == "1" and float(first[4]) == 9.0
    rows = [json.loads(x) for x in (d / "depth_log.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"qid", "docid", "layers"}
    assert (d / "depth_usage.png").stat().st_size > 0
    assert json.loads((d / "rerank_info.json").read_text())["pairs"] == 24


def test_complete_run_is_skipped_conflicts_refused_force_redoes(collection, model_dir, tmp_path, monkeypatch):
    opts = options(collection, model_dir, tmp_path / "exp", maw=None)
    first = run_eval(opts)
    assert first.variant == "non_maw" and not (first.run_dir / "depth_log.jsonl").exists()
    stamp = {p.name: p.stat().st_mtime_ns for p in first.run_dir.iterdir()}

    def boom(*a, **k):
        raise AssertionError("a complete run must not be reranked again")

    monkeypatch.setattr("maw_reranker.evaluate.rerank.rerank", boom)
    again = run_eval(options(collection, model_dir, tmp_path / "exp", maw=None, batch_size=7))  # speed-only change
    assert again.status == "skipped" and again.metrics == first.metrics
    assert {p.name: p.stat().st_mtime_ns for p in first.run_dir.iterdir()} == stamp
    with pytest.raises(RunConflictError, match="depth"):
        run_eval(options(collection, model_dir, tmp_path / "exp", maw=None, depth=2))
    monkeypatch.undo()
    redone = run_eval(options(collection, model_dir, tmp_path / "exp", maw=None, depth=2, force=True))
    assert redone.status == "done" and all(len(v) == 2 for v in read_run(redone.run_dir / "run.trec").values())


def test_a_skipped_run_removes_what_a_killed_redo_left_beside_it(collection, model_dir, tmp_path):
    """kill -9 during a --force redo leaves its staging folder beside the complete run; the next run, which skips
    the run as complete, removes it (its owner is dead) and keeps a live writer's."""
    import subprocess
    import sys

    from maw_reranker.utils.io import AtomicDirectory

    first = run_eval(options(collection, model_dir, tmp_path / "exp", maw=None))
    live = AtomicDirectory(first.run_dir)  # a concurrent writer of the same run, still running (this process)
    live.begin()
    killed_redo = ("import os, signal, sys\n"
                   "from maw_reranker.utils.io import AtomicDirectory\n"
                   "staging = AtomicDirectory(sys.argv[1]).begin()\n"
                   "(staging / 'scores.tsv').write_text('q1 d1 0.5')\n"
                   "print(staging, flush=True)\n"
                   "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", killed_redo, str(first.run_dir)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    dead = Path(proc.stdout.strip())
    assert dead.parent == first.run_dir.parent and (dead / "scores.tsv").is_file()
    again = run_eval(options(collection, model_dir, tmp_path / "exp", maw=None))
    assert again.status == "skipped" and again.metrics == first.metrics
    assert not dead.exists() and live.tmp.is_dir()
    live.abort()
    assert sorted(p.name for p in first.run_dir.parent.iterdir()) == [first.run_dir.name]


def test_no_qrels_still_writes_the_run(collection, model_dir, tmp_path):
    out_run = tmp_path / "mine.reranked"
    out = run_eval(options(collection, model_dir, tmp_path / "exp", qrels=None, maw=None, output_run=str(out_run)))
    assert out.metrics is None and RunArtifacts(out.run_dir).is_complete()
    assert not (out.run_dir / "metrics.json").exists()
    assert read_run(out_run) == read_run(out.run_dir / "run.trec")
    assert len(read_run(out_run)) == 6
    # a forced redo must not leave an earlier run's metrics behind
    run_eval(options(collection, model_dir, tmp_path / "exp2", maw=None, variant="x"))
    assert (tmp_path / "exp2/tiny/x/seed_0/metrics.json").is_file()
    run_eval(options(collection, model_dir, tmp_path / "exp2", maw=None, variant="x", qrels=None, force=True))
    assert not (tmp_path / "exp2/tiny/x/seed_0/metrics.json").exists()


def test_missing_documents_error_or_logged_skip(tmp_path, model_dir, caplog):
    beir = write_beir(tmp_path / "beir")
    cands = tmp_path / "cands.run"
    cands.write_text("q1 Q0 d1 1 3 x\nq1 Q0 nope 2 2 x\nq2 Q0 d2 1 3 x\n")
    base = dict(dataset=str(beir), candidates=str(cands), model=model_dir, output_dir=str(tmp_path / "exp"), maw=None,
                progress=False, standard_measures=False, measures=MEASURES)
    with pytest.raises(RerankError, match=f"q1/nope.*\\[candidates {cands}, dataset "):  # names the run file
        run_eval(EvalOptions(**base))
    with caplog.at_level(logging.WARNING):
        out = run_eval(EvalOptions(**base, on_missing="skip"))
    assert "q1/nope" in caplog.text
    assert json.loads((out.run_dir / "rerank_info.json").read_text())["skipped_docs"] == {"q1": ["nope"]}
    assert read_run(out.run_dir / "run.trec")["q1"].keys() == {"d1"}
    # judged queries absent from the pool are left out by default, and listed
    assert "q3" in json.loads((out.run_dir / "eval_info.json").read_text())["missing_from_run"]


def test_mismatched_ids_fail_before_scoring(tmp_path, model_dir, monkeypatch):
    beir = write_beir(tmp_path / "beir")
    cands = tmp_path / "cands.run"
    cands.write_text("Q-1 Q0 d1 1 3 x\n")
    monkeypatch.setattr("maw_reranker.cross_encoder.model.CrossEncoderWithMAW.from_pretrained",
                        lambda *a, **k: pytest.fail("model loaded before the id check"))
    with pytest.raises(RerankError, match="mismatched ids"):
        run_eval(EvalOptions(dataset=str(beir), candidates=str(cands), model=model_dir, maw=None,
                             output_dir=str(tmp_path / "exp"), progress=False))


def test_parse_maw_names_bad_fields():
    assert parse_maw("auto") == "auto" and parse_maw(None) is None and parse_maw("null") is None
    cfg = with_run_seed(parse_maw("{depth_dim: 4, gating_mode: random}"), 2)
    assert cfg.depth_dim == 4 and cfg.maw_random_seed == 2
    with pytest.raises(ValueError, match="depthdim"):
        parse_maw({"depthdim": 4})
    with pytest.raises(ValueError, match="gating_mode"):
        parse_maw({"gating_mode": "magic"})


def test_suite_runs_summarises_plots_and_is_idempotent(collection, model_dir, tmp_path, monkeypatch):
    runs = [options(collection, model_dir, tmp_path / "exp", variant=v, seed=s, maw=m)
            for v, m in [("base", None), ("maw_u", {"depth_dim": 2, "gating_mode": "random", "maw_strength": 0.7})]
            for s in (0, 1)]
    out = run_suite(runs, "base", name="t", n_resamples=200)
    folder = tmp_path / "exp" / "tiny" / "_suites" / "t"
    assert out.summaries == {"tiny": folder}
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["variants"]) == ["base", "maw_u"] and summary["measures"] == MEASURES
    assert summary["variants"]["maw_u"]["n_seeds"] == 2
    comp = summary["comparisons"]["maw_u"]["nDCG@10"]
    # the paired test inputs: per-query values averaged over the two seeds, read back from per_query.json
    pq = {v: [json.loads((tmp_path / "exp" / "tiny" / v / f"seed_{s}" / "per_query.json").read_text())["nDCG@10"]
              for s in (0, 1)] for v in ("base", "maw_u")}
    mean = {v: {q: (a[q] + b[q]) / 2 for q in a} for v, (a, b) in pq.items()}
    assert comp["mean_diff"] == pytest.approx(sum(mean["maw_u"][q] - mean["base"][q] for q in mean["base"]) / 5)
    assert {"ttest_p", "wilcoxon_p", "ci_low", "ci_high", "cohens_dz", "ttest_p_holm"} <= set(comp)
    assert (folder / "summary.md").read_text().startswith("# Summary: tiny")
    pngs = {p.name for p in folder.glob("*.png")}
    assert {"depth_maw_u.png", "delta_maw_u_nDCG_10.png", "delta_maw_u_RR_10.png"} <= pngs
    monkeypatch.setattr(eval_run_mod, "candidates_from_options", lambda *a: pytest.fail("complete runs must be skipped"))
    again = run_suite(runs, "base", name="t", n_resamples=200)
    assert [o.status for o in again.runs] == ["skipped"] * 4


@pytest.mark.parametrize("maw", [None, {"depth_dim": 2, "gating_mode": "learned", "maw_strength": 0.5}])
def test_reranking_through_the_prefix_cache_equals_the_full_model(collection, model_dir, tmp_path, maw):
    full = run_eval(options(collection, model_dir, tmp_path / "full", maw=maw, variant="v"))
    cached = run_eval(options(collection, model_dir, tmp_path / "cached", maw=maw, variant="v",
                              prefix_cache=str(tmp_path / "cache"), prefix_cache_dtype="fp32"))
    a = {(r[0], r[1]): float(r[2]) for r in _scores(full.run_dir)}
    b = {(r[0], r[1]): float(r[2]) for r in _scores(cached.run_dir)}
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < 1e-4
    assert (cached.run_dir / "depth_log.jsonl").is_file() == (maw is not None)
    again = run_eval(options(collection, model_dir, tmp_path / "again", maw=maw, variant="v",
                             prefix_cache=str(tmp_path / "cache"), prefix_cache_dtype="fp32"))
    assert again.metrics == cached.metrics  # the second model scores from the states the first one filled


def _scores(run_dir):
    lines = (run_dir / "scores.tsv").read_text().splitlines()[1:]
    return [line.split("\t") for line in lines]
