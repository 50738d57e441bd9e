"""benchmarks/gpu_bundle.py: the checkpoint travels in a quarter of its size and comes back bit for bit; the study's
data travels gzip'd and is checked on arrival; `run` gives gpu_check and the study one time guard and brings back
what a device call can carry."""

import gzip
import importlib.util
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_module():
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_codes_rebuild_every_tensor_exactly(bundle_module):
    gen = torch.Generator().manual_seed(0)
    levels = torch.randn(256, generator=gen)
    state = {"quantized": levels[torch.randint(0, 256, (64, 32), generator=gen)],
             "dense": torch.randn(300, generator=gen),  # > 256 distinct values: kept as it is
             "signed_zeros": torch.tensor([0.0, -0.0, 1.0, -0.0]),  # equal as numbers, not as bits
             "half": levels[:7].half().repeat(3),
             "ids": torch.arange(10)}
    packed = bundle_module.encode(state)
    assert packed["codes::quantized"].dtype == torch.uint8 and "raw::dense" in packed and "raw::ids" in packed
    rebuilt = bundle_module.decode(packed)
    assert bundle_module.same_bits(rebuilt, state)
    assert torch.signbit(rebuilt["signed_zeros"]).tolist() == [False, True, False, True]
    assert not bundle_module.same_bits({"z": torch.tensor([0.0])}, {"z": torch.tensor([-0.0])})


def test_pack_then_unpack_gives_the_same_checkpoint(bundle_module, tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    models, data = tmp_path / "models", tmp_path / "data"
    source = models / bundle_module.MODEL
    source.mkdir(parents=True)
    state = {"w": torch.randn(16, generator=gen)[torch.randint(0, 16, (40, 40), generator=gen)],
             "b": torch.randn(400, generator=gen)}
    save_file(state, str(source / "model.safetensors"))
    (source / "config.json").write_text('{"model_type": "bert"}')
    (data / bundle_module.DL19).parent.mkdir(parents=True)
    (data / bundle_module.DL19).write_text("[]")
    downloads = []
    monkeypatch.setattr(bundle_module.subprocess, "run", lambda cmd, check: downloads.append(cmd))  # no network
    monkeypatch.setattr(bundle_module, "study_data", lambda study: [bundle_module.DL19])

    bundle = tmp_path / ".gpu"
    bundle_module.pack(bundle, models, data)
    assert not (bundle / "model" / bundle_module.MODEL / "model.safetensors").exists()
    assert gzip.decompress((bundle / "data" / f"{bundle_module.DL19}.gz").read_bytes()) == b"[]"
    assert downloads and "download" in downloads[0] and "--python-version" in downloads[0]
    assert any(spec.startswith("ir_measures==") for spec in downloads[0])  # at the version installed here
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["study"] == "maw-gpu" and [e["path"] for e in manifest["data"]] == [str(bundle_module.DL19)]
    bundle_module.unpack(bundle, tmp_path / "there")
    target = tmp_path / "there" / bundle_module.MODEL
    rebuilt = load_file(str(target / "model.safetensors"))
    assert all(torch.equal(rebuilt[k], state[k]) for k in state) and rebuilt.keys() == state.keys()
    assert (target / "config.json").read_text() == '{"model_type": "bert"}'


def test_pack_without_the_checkpoint_says_what_to_run(bundle_module, tmp_path):
    with pytest.raises(SystemExit, match="get-models.sh"):
        bundle_module.pack(tmp_path / ".gpu", tmp_path / "none", tmp_path)


def test_study_data_is_what_the_gpu_study_config_names(bundle_module):
    paths = [str(p) for p in bundle_module.study_data("maw-gpu")]
    assert paths[0] == str(bundle_module.DL19)  # gpu_check's data, first
    assert "scifact" in paths and "trec-dl-2021-passage/qrels.dl21-passage.txt" in paths
    assert "trec-dl-2021-passage/rank_llm/BM25/retrieve_results_dl21.json" in paths and len(set(paths)) == len(paths)
    with pytest.raises(SystemExit, match="no such study config"):
        bundle_module.study_data("no-such-study")


def test_data_travels_gzipped_and_a_damaged_file_is_named(bundle_module, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "beir" / "qrels").mkdir(parents=True)
    (data / "beir" / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n' * 50)
    (data / "beir" / "qrels" / "test.tsv").write_text("q\td\t1\n")
    (data / "one.json").write_text("[1, 2]")
    monkeypatch.setattr(bundle_module, "study_data", lambda study: [Path("one.json"), Path("beir")])
    bundle = tmp_path / ".gpu"
    entries = bundle_module.pack_data(bundle, data, "any")
    assert sorted(e["path"] for e in entries) == ["beir/corpus.jsonl", "beir/qrels/test.tsv", "one.json"]
    assert (bundle / "data" / "beir" / "corpus.jsonl.gz").stat().st_size < (data / "beir" / "corpus.jsonl").stat().st_size
    there = tmp_path / "there"
    bundle_module.unpack_data(bundle, there, {"data": entries})
    for entry in entries:
        assert (there / entry["path"]).read_bytes() == (data / entry["path"]).read_bytes()
    (bundle / "data" / "one.json.gz").write_bytes(gzip.compress(b"[1, 3]"))
    with pytest.raises(SystemExit, match="one.json: its SHA-256"):
        bundle_module.unpack_data(bundle, tmp_path / "again", {"data": entries})
    monkeypatch.setattr(bundle_module, "study_data", lambda study: [Path("missing.json")])
    with pytest.raises(SystemExit, match="missing.json not found"):
        bundle_module.pack_data(tmp_path / "b2", data, "any")


def test_the_checkpoint_is_found_under_its_hub_id(bundle_module, tmp_path):
    from huggingface_hub import snapshot_download

    source = tmp_path / "models" / bundle_module.MODEL
    source.mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, str(source / "model.safetensors"))
    (source / "config.json").write_text("{}")
    bundle = tmp_path / ".gpu"
    (bundle / "model" / bundle_module.MODEL).mkdir(parents=True)
    save_file(bundle_module.encode(load_file(str(source / "model.safetensors"))),
              str(bundle / "model" / bundle_module.MODEL / "packed.safetensors"))
    (bundle / "model" / bundle_module.MODEL / "config.json").write_text("{}")
    snapshot = bundle_module.seed_cache(bundle, tmp_path / "hf")
    found = snapshot_download(bundle_module.CROSS_ENCODER, cache_dir=str(tmp_path / "hf" / "hub"),
                              local_files_only=True)
    assert Path(found) == snapshot and torch.equal(load_file(str(snapshot / "model.safetensors"))["w"], torch.zeros(3))


def test_only_wheels_whose_module_is_missing_are_installed(bundle_module, tmp_path, monkeypatch):
    wheels = tmp_path / ".gpu" / "wheels"
    wheels.mkdir(parents=True)
    for name in ("bm25s-0.3.16-py3-none-any.whl", "nosuchmod-1.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    monkeypatch.setitem(bundle_module.WHEELS, "nosuchmod", "nosuchmod_abc")
    calls = []
    monkeypatch.setattr(bundle_module.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    installed = bundle_module.install_wheels(tmp_path / ".gpu", tmp_path / "site", None)
    assert installed == ["nosuchmod-1.0-py3-none-any.whl"]  # bm25s imports here: not installed again
    assert calls and calls[0][-1].endswith("nosuchmod-1.0-py3-none-any.whl") and "--target" in calls[0]


def test_a_step_past_its_limit_is_stopped_and_its_output_kept(bundle_module, tmp_path):
    log = bundle_module.Log(tmp_path / "run.log")
    code = "import time; print('started', flush=True); time.sleep(60)"
    result = bundle_module.stream([sys.executable, "-c", code], {}, tmp_path, log, timeout=3,
                                  copy=tmp_path / "copy.txt")
    assert result["timed_out"] and result["seconds"] < 30
    assert "started" in (tmp_path / "copy.txt").read_text() and "stopped at its limit" in (tmp_path / "run.log").read_text()
    done = bundle_module.stream([sys.executable, "-c", "print('ok')"], {}, tmp_path, log, timeout=60)
    assert done["rc"] == 0 and not done["timed_out"]


def test_the_whole_process_group_is_stopped(bundle_module, tmp_path):
    """A child that ignores SIGTERM, and a grandchild it started: neither outlives the limit."""
    marker = tmp_path / "grandchild.pid"
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(marker)!r}, 'w').write(str(p.pid)); print('up', flush=True); time.sleep(120)")
    result = bundle_module.stream([sys.executable, "-c", code], {}, tmp_path, bundle_module.Log(tmp_path / "l"),
                                  timeout=3)
    assert result["timed_out"] and result["seconds"] < 30
    pid = int(marker.read_text())
    for _ in range(50):  # the kill is asynchronous
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the grandchild {pid} still runs")


def test_collect_brings_back_the_report_results_and_maw_parameters(bundle_module, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    report = work / "experiments" / "_studies" / "s" / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text("# Study s")
    (work / "experiments" / "scifact-test" / "maw_gate" / "seed_0").mkdir(parents=True)
    (work / "experiments" / "scifact-test" / "maw_gate" / "seed_0" / "metrics.json").write_text("{}")
    for variant, complete, maw in (("maw_gate", True, True), ("topk", True, False), ("maw_learned", False, True)):
        run = work / "runs" / "s" / "scifact" / variant / "seed_0"
        (run / "final").mkdir(parents=True)
        if maw:
            save_file({"layer.11.gating.theta": torch.ones(8)}, str(run / "final" / "maw_model.safetensors"))
        (run / "final" / "model.safetensors").write_bytes(b"big")
        if complete:
            (run / "train_summary.json").write_text("{}")
    got = bundle_module.collect(work, out, "s", bundle_module.Log(out / "run.log"))
    assert got["complete_trainings"] == ["scifact/maw_gate/seed_0", "scifact/topk/seed_0"] and got["report"]
    assert (out / "study_report.md").read_text() == "# Study s"
    params = load_file(str(out / "maw_parameters.safetensors"))
    assert list(params) == ["scifact/maw_gate/seed_0/layer.11.gating.theta"]  # not the incomplete maw_learned
    with tarfile.open(out / "study_results.tar.gz") as tar:
        names = tar.getnames()
    assert "experiments/scifact-test/maw_gate/seed_0/metrics.json" in names
    assert "runs/s/scifact/topk/seed_0/train_summary.json" in names
    assert not any(n.endswith("model.safetensors") for n in names)


def test_run_gives_the_study_what_is_left_of_the_deadline(bundle_module, tmp_path, monkeypatch):
    bundle = tmp_path / ".gpu"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"study": "maw-gpu", "data": []}))
    monkeypatch.setattr(bundle_module, "install_wheels", lambda *a: [])
    monkeypatch.setattr(bundle_module, "seed_cache", lambda b, hf: hf / "snapshot")
    calls = []

    def fake_stream(cmd, env, cwd, log, timeout, copy=None):
        calls.append((cmd, env, timeout))
        return {"rc": 0, "seconds": 0.0, "timed_out": False}

    monkeypatch.setattr(bundle_module, "stream", fake_stream)
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", "/elsewhere")  # would take precedence over HF_HOME
    started = time.monotonic() - 20  # the deadline counts from the start of the process: 20 s ago
    summary = bundle_module.run(bundle, tmp_path / "out", "cpu", True, deadline_s=400, check_s=50, reserve_s=100,
                                work=tmp_path / "work", start=started)
    (check, check_env, check_limit), (study, env, limit) = calls
    assert "gpu_check.py" in check[1] and "--quick" in check and "tests" not in check[check.index("--only"):]
    assert check_limit == 50 and float(check[check.index("--deadline-s") + 1]) < 50
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["HF_HUB_OFFLINE"] == "1" and "HUGGINGFACE_HUB_CACHE" not in env
    assert env["MAW_DATA"] == str(tmp_path / "work" / "data") and env["HF_HOME"] == str(tmp_path / "work" / "hf")
    budget = float(study[study.index("--time-budget-s") + 1])
    left = 400 - 20  # the fake steps take no time
    assert left - 100 - bundle_module.STARTUP_S - 2 <= budget <= left - 100 - bundle_module.STARTUP_S
    assert "--quick-run" in study and study[study.index("--config") + 1] == "maw-gpu"
    # the study's own guard stops first; the hard stop is a last resort that leaves time to collect
    # after the guard, the evaluation and report have the reserve less the time kept for collecting
    assert abs((limit - budget - bundle_module.STARTUP_S) - (100 - bundle_module.COLLECT_S)) < 2
    assert limit <= left - bundle_module.COLLECT_S
    assert json.loads((tmp_path / "out" / "run.json").read_text())["time_budget_s"] == summary["time_budget_s"]
    calls.clear()
    bundle_module.run(bundle, tmp_path / "out2", "cuda", False, deadline_s=400, check_s=0, reserve_s=100,
                      work=tmp_path / "work2")
    assert len(calls) == 1 and "--quick-run" not in calls[0][0] and "CUDA_VISIBLE_DEVICES" not in calls[0][1]


def test_run_json_is_written_when_the_run_fails(bundle_module, tmp_path, monkeypatch):
    bundle = tmp_path / ".gpu"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"study": "maw-gpu", "data": [{"path": "x", "sha256": "0"}]}))
    monkeypatch.setattr(bundle_module, "install_wheels", lambda *a: [])
    monkeypatch.setattr(bundle_module, "seed_cache", lambda b, hf: hf / "snapshot")
    with pytest.raises(FileNotFoundError):
        bundle_module.run(bundle, tmp_path / "out", "cpu", True, 400, 0, 100, work=tmp_path / "work")
    assert "FileNotFoundError" in json.loads((tmp_path / "out" / "run.json").read_text())["error"]
