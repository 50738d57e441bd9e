"""Bad input and faults through the CLI: one line naming the file/line/option, no traceback, nothing complete lost."""

import errno
import json
import shutil
from pathlib import Path

import pytest

from maw_reranker.cli.errors import describe
from maw_reranker.cli.main import main
from maw_reranker.experiments import eval_run
from tests.data.fixtures import DOCS, QUERIES, write_beir, write_tsv_layout


@pytest.fixture()
def data_args(tmp_path):
    paths = write_tsv_layout(tmp_path / "col")
    paths["run"].write_text("".join(f"{q} Q0 {d} {r} {10 - r} bm25\n" for q in QUERIES for r, d in enumerate(DOCS, 1)))
    return paths, ["--dataset", str(paths["docs"]), "--queries", str(paths["queries"]), "--qrels",
                   str(paths["qrels"]), "--run", str(paths["run"]), "--dataset-name", "tiny"]


def _eval(args, model_dir, out, *extra):
    return main(["eval", *args, "--model", model_dir, "--output-dir", str(out), "--progress", "false",
                 "--standard-measures", "false", "--variant", "v", *extra])


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert lines and lines[-1].startswith("maw-rerank "), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


def test_failed_force_redo_keeps_the_complete_run(data_args, model_dir, tmp_path, capsys, monkeypatch):
    paths, args = data_args
    out = tmp_path / "exp"
    assert _eval(args, model_dir, out) == 0
    run_dir = out / "tiny" / "v" / "seed_0"
    before = _snapshot(run_dir)
    capsys.readouterr()
    # an invalid option: refused before anything is touched
    assert _eval(args, model_dir, out, "--force", "true", "--batch-size", "-1") == 2
    _one_line_error(capsys.readouterr().err, "batch_size")
    assert _snapshot(run_dir) == before
    # a failure mid-run (a pool document missing from the corpus)
    bad_run = tmp_path / "bad.run"
    bad_run.write_text(paths["run"].read_text() + "q1 Q0 d404 7 0.5 bm25\n")
    assert _eval(args, model_dir, out, "--force", "true", "--candidates", str(bad_run)) == 1
    _one_line_error(capsys.readouterr().err, "d404")
    assert _snapshot(run_dir) == before
    # Ctrl-C while scoring
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("maw_reranker.evaluate.rerank.rerank", interrupted)
    assert _eval(args, model_dir, out, "--force", "true") == 130
    assert _snapshot(run_dir) == before
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_duplicate_and_empty_qrels_are_errors(data_args, model_dir, tmp_path, capsys):
    paths, args = data_args
    qrels = paths["qrels"]
    first = qrels.read_text().splitlines()[0].split()
    qrels.write_text(qrels.read_text() + f"{first[0]} 0 {first[2]} 0\n")
    assert _eval(args, model_dir, tmp_path / "a") == 1
    _one_line_error(capsys.readouterr().err, str(qrels), "duplicate", ":1")
    qrels.write_text("")
    assert _eval(args, model_dir, tmp_path / "b") == 1
    _one_line_error(capsys.readouterr().err, str(qrels), "empty")
    beir = write_beir(tmp_path / "beir")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    assert main(["build-pools", "--dataset", str(beir), "--pool-engine", "bm25s", "--pools-dir", str(tmp_path / "p")]) == 1
    _one_line_error(capsys.readouterr().err, "test.tsv", "empty")


def test_model_folder_without_tokenizer_is_refused(data_args, model_dir, tmp_path, capsys):
    _, args = data_args
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(model_dir) / name, bare / name)
    assert _eval(args, str(bare), tmp_path / "exp") == 1
    _one_line_error(capsys.readouterr().err, str(bare), "tokenizer")
    assert not (tmp_path / "exp").exists()


def test_max_length_beyond_positions_and_zero(data_args, model_dir, tmp_path, capsys):
    _, args = data_args
    positions = json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]
    assert _eval(args, model_dir, tmp_path / "exp", "--max-length", str(positions + 1)) == 2  # a bad option value
    _one_line_error(capsys.readouterr().err, "max_length", str(positions))
    assert _eval(args, model_dir, tmp_path / "exp", "--max-length", "0") == 2
    _one_line_error(capsys.readouterr().err, "max_length")


def test_missing_cuda_is_one_line(data_args, model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, args = data_args
    assert _eval(args, model_dir, tmp_path / "exp", "--device", "cuda") == 1
    _one_line_error(capsys.readouterr().err, "device", "CUDA is not available")


def test_mapping_model_in_a_config_is_refused_even_when_overridden(data_args, model_dir, tmp_path, capsys):
    _, args = data_args
    config = tmp_path / "c.yaml"
    config.write_text("model: {name: x}\n")
    assert main(["eval", "--config", str(config), *args, "--output-dir", str(tmp_path / "e")]) == 2
    _one_line_error(capsys.readouterr().err, str(config), "model")
    assert main(["eval", "--config", str(config), *args, "--model", model_dir, "--output-dir", str(tmp_path / "e")]) == 2
    _one_line_error(capsys.readouterr().err, str(config), "model")


def test_build_pools_refuses_run(tmp_path, capsys):
    beir = write_beir(tmp_path / "beir")
    run = tmp_path / "r.run"
    run.write_text("q1 Q0 d1 1 1.0 x\n")
    assert main(["build-pools", "--dataset", str(beir), "--run", str(run), "--pools-dir", str(tmp_path / "p")]) == 2
    _one_line_error(capsys.readouterr().err, "run")


def test_bad_utf8_names_file_and_line(data_args, model_dir, tmp_path, capsys):
    paths, args = data_args
    lines = paths["docs"].read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"e", b"\xff", 1)
    paths["docs"].write_bytes(b"".join(lines))
    assert _eval(args, model_dir, tmp_path / "exp") == 1
    _one_line_error(capsys.readouterr().err, f"{paths['docs']}:3", "UTF-8")


def test_unwritable_output_is_checked_first(data_args, model_dir, tmp_path, capsys):
    _, args = data_args
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _eval(args, model_dir, blocker / "exp") == 1
    _one_line_error(capsys.readouterr().err, "output_dir", str(blocker))


def test_os_errors_become_one_line(data_args, model_dir, tmp_path, capsys, monkeypatch):
    _, args = data_args

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "exp" / "run.trec"))

    monkeypatch.setattr(eval_run, "_score_and_write", full_disk)
    assert _eval(args, model_dir, tmp_path / "exp") == 1
    _one_line_error(capsys.readouterr().err, "no space left on device", "run.trec")
    assert describe(PermissionError(errno.EACCES, "Permission denied", "/x/y")) == "permission denied: /x/y"
    assert describe(OSError(errno.EROFS, "Read-only file system", "/ro")) == "read-only file system: /ro"
    assert "disk is full" in describe(RuntimeError("[enforce fail at inline_container.cc] unexpected pos 90624 vs 90512"))


def test_debug_shows_the_traceback(data_args, model_dir, tmp_path, monkeypatch):
    _, args = data_args

    def boom(*a, **k):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(eval_run, "_score_and_write", boom)
    assert _eval(args, model_dir, tmp_path / "exp") == 1
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "eval", *args, "--model", model_dir, "--output-dir", str(tmp_path / "exp"), "--progress", "false"])


def test_on_missing_skip_applies_to_a_dataset_run(data_args, model_dir, tmp_path, capsys):
    paths, args = data_args
    paths["run"].write_text(paths["run"].read_text() + "q1 Q0 d99 7 0.5 bm25\n")
    assert _eval(args, model_dir, tmp_path / "a") == 1
    _one_line_error(capsys.readouterr().err, "q1/d99", "on_missing")
    assert _eval(args, model_dir, tmp_path / "b", "--on-missing", "skip") == 0


def test_output_run_must_not_overwrite_an_input_or_be_a_folder(data_args, model_dir, tmp_path, capsys):
    paths, args = data_args
    before = paths["run"].read_bytes()
    assert _eval(args, model_dir, tmp_path / "a", "--output-run", str(paths["run"])) == 2
    _one_line_error(capsys.readouterr().err, "output_run", "option 'run'")
    assert paths["run"].read_bytes() == before
    assert _eval(args, model_dir, tmp_path / "a") == 0
    run_dir = tmp_path / "a" / "tiny" / "v" / "seed_0"
    complete = _snapshot(run_dir)
    folder = tmp_path / "folder"
    folder.mkdir()
    assert _eval(args, model_dir, tmp_path / "a", "--force", "true", "--output-run", str(folder)) == 1
    _one_line_error(capsys.readouterr().err, "output_run", "is a folder")
    assert _snapshot(run_dir) == complete


def test_changed_input_files_are_not_the_same_run(data_args, model_dir, tmp_path, capsys):
    import os

    paths, args = data_args
    assert _eval(args, model_dir, tmp_path / "a") == 0
    stat = paths["run"].stat()
    os.utime(paths["run"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # edited in place
    capsys.readouterr()
    assert _eval(args, model_dir, tmp_path / "a") == 1
    _one_line_error(capsys.readouterr().err, "input files that have changed", "run")
    assert _eval(args, model_dir, tmp_path / "a", "--force", "true") == 0


def test_bad_values_name_the_field(data_args, model_dir, tmp_path, capsys):
    _, args = data_args
    for spec, needle in (("{depth_dim: 2.7}", "maw.depth_dim"), ("{maw_strength: abc}", "maw.maw_strength"),
                         ("{layers: foo}", "maw.layers"), ("{depth_dim: 4", "invalid YAML")):
        assert _eval(args, model_dir, tmp_path / "a", "--maw", spec) == 2
        _one_line_error(capsys.readouterr().err, needle)
    qrels = tmp_path / "q.txt"
    for line, needle in (("q1 0 d1 1.5", "must be an integer"), ("q1 0 d1 inf", "must be an integer"),
                         ("q1 0 d1", "a column missing")):
        qrels.write_text(line + "\n")
        assert main(["eval", *args[:4], "--qrels", str(qrels), *args[6:], "--model", model_dir,
                     "--output-dir", str(tmp_path / "b"), "--progress", "false"]) == 1
        _one_line_error(capsys.readouterr().err, f"{qrels}:1", needle)
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\t\nq2\tcats\n")
    assert main(["eval", *args[:2], "--queries", str(queries), *args[4:], "--model", model_dir,
                 "--output-dir", str(tmp_path / "c"), "--progress", "false"]) == 1
    _one_line_error(capsys.readouterr().err, f"{queries}:1", "no text")


def test_empty_run_and_empty_output_folders(data_args, model_dir, tmp_path, capsys):
    paths, args = data_args
    paths["run"].write_text("\n\n")
    assert _eval(args, model_dir, tmp_path / "a") == 1
    _one_line_error(capsys.readouterr().err, str(paths["run"]), "empty")
    beir = write_beir(tmp_path / "beir")
    assert main(["build-pools", "--dataset", str(beir), "--pool-engine", "bm25s", "--pools-dir", ""]) == 2
    _one_line_error(capsys.readouterr().err, "pools_dir", "empty")


def test_a_closed_pipe_is_not_an_error():
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m maw_reranker.cli.main configs | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("packaged configs") and proc.stderr == ""
