"""`maw-rerank mine-negatives`: flags and YAML configs, what it prints, one-line errors, and train on its output."""

from __future__ import annotations

import json

from maw_reranker.cli.main import main
from maw_reranker.data.trec import read_run
from tests.train.helpers import write_task


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and lines[-1].startswith("maw-rerank mine-negatives: error: "), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


def test_mine_negatives_command(tmp_path, capsys):
    task = write_task(tmp_path / "t")
    out = tmp_path / "neg" / "mined.run"
    args = ["mine-negatives", "--dataset", str(task["dataset"]), "--split", "train", "--pool-engine", "bm25s",
            "--pool-k", "20", "--pools-dir", str(tmp_path / "pools"), "--neg-rank-max", "10", "--num-negatives", "3",
            "--margin", "0.1", "--output-run", str(out), "--progress", "false"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{out}: ") and "negatives for 12 of 12 queries" in printed[0]
    assert printed[1] == f"settings and inputs: {out}.json"
    run = read_run(out)
    assert len(run) == 12 and all(1 <= len(h) <= 3 for h in run.values())
    meta = json.loads((tmp_path / "neg" / "mined.run.json").read_text())
    assert meta["settings"]["margin"] == 0.1 and meta["inputs"]["candidates"]["kind"] == "bm25_pool"
    assert meta["counts"]["negatives"] == sum(map(len, run.values()))


def test_mine_negatives_from_a_config_then_train(tmp_path, capsys):
    from tests.train.helpers import tiny_model_dir

    task = write_task(tmp_path / "t")
    config = tmp_path / "mine.yaml"
    config.write_text(f"dataset: {task['dataset']}\nsplit: train\ncandidates: {task['run']}\nneg_rank_min: 3\n"
                      f"neg_rank_max: 20\nnum_negatives: 4\nsampling_strategy: random\nseed: 7\nprogress: false\n")
    out = tmp_path / "mined.run"
    assert main(["mine-negatives", "--config", str(config), "--output-run", str(out), "--tag", "hn"]) == 0
    assert all(line.endswith(" hn") for line in out.read_text().splitlines())
    capsys.readouterr()
    code = main(["train", "--model", str(tiny_model_dir(tmp_path / "m")), "--dataset", str(task["dataset"]),
                 "--split", "train", "--candidates", str(out), "--num-negatives", "2", "--batch-size", "2",
                 "--max-steps", "1", "--max-length", "32", "--report-to", "", "--no-progress",
                 "--checkpoint-every", "0", "--output-dir", str(tmp_path / "run")])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert str(out.resolve()) in json.dumps(saved)


def test_mine_negatives_errors(tmp_path, capsys):
    task = write_task(tmp_path / "t")
    base = ["mine-negatives", "--dataset", str(task["dataset"]), "--split", "train", "--candidates", str(task["run"]),
            "--progress", "false"]
    assert main(base) == 2  # no output
    _one_line_error(capsys.readouterr().err, "option 'output_run' is empty")
    assert main(base + ["--output-run", str(tmp_path / "o.run"), "--relative-margin", "1.5"]) == 2
    _one_line_error(capsys.readouterr().err, "option 'relative_margin' must be in [0, 1)")
    assert main(base + ["--output-run", str(tmp_path / "o.run"), "--miner", "dense"]) == 2
    _one_line_error(capsys.readouterr().err, "option 'miner' got 'dense'", "bm25, cross-encoder")
    assert main(base + ["--output-run", str(tmp_path / "o.run"), "--model", "some/model"]) == 2
    _one_line_error(capsys.readouterr().err, "option 'model'", "miner cross-encoder only")
    assert main(base + ["--output-run", str(task["run"])]) == 2
    _one_line_error(capsys.readouterr().err, "option 'output_run'", "is option 'candidates'")
    assert main(base + ["--output-run", str(tmp_path / "o.run"), "--miner", "cross-encoder", "--model",
                        str(tmp_path / "no-model")]) == 1
    _one_line_error(capsys.readouterr().err, "option 'model'", "no-model")
    assert main(base[:5] + ["--candidates", str(tmp_path / "nope.run"), "--output-run", str(tmp_path / "o.run")]) == 1
    _one_line_error(capsys.readouterr().err, "option 'candidates': run file not found", "nope.run")
    bad = tmp_path / "bad.run"
    bad.write_text("q0 Q0 d1_0 1 high test\n")
    assert main(base[:5] + ["--candidates", str(bad), "--output-run", str(tmp_path / "o.run")]) == 1
    _one_line_error(capsys.readouterr().err, f"{bad}:1: score is not a number")
    assert main(base + ["--output-run", str(tmp_path / "o.run"), "--margin", "1000"]) == 1
    _one_line_error(capsys.readouterr().err, "no negative left for any query", "margin")
    assert not (tmp_path / "o.run").exists()
    assert main(["mine-negatives", "--dataset", str(tmp_path / "missing"), "--output-run", str(tmp_path / "o.run")]) == 1
    _one_line_error(capsys.readouterr().err, "missing")


def test_mine_negatives_help(capsys):
    try:
        main(["mine-negatives", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    for flag in ("--neg-rank-min", "--neg-rank-max", "--num-negatives", "--margin", "--relative-margin", "--miner",
                 "--pool-engine", "--model", "--output-run"):
        assert flag in out
