"""benchmarks/gpu_bundle.py: the checkpoint travels in a quarter of its size and comes back bit for bit."""

import importlib.util
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

    bundle = tmp_path / ".gpu"
    bundle_module.pack(bundle, models, data)
    assert not (bundle / "model" / bundle_module.MODEL / "model.safetensors").exists()
    assert (bundle / "data" / bundle_module.DL19).read_text() == "[]"
    assert downloads and "download" in downloads[0]
    bundle_module.unpack(bundle, tmp_path / "there")
    target = tmp_path / "there" / bundle_module.MODEL
    rebuilt = load_file(str(target / "model.safetensors"))
    assert all(torch.equal(rebuilt[k], state[k]) for k in state) and rebuilt.keys() == state.keys()
    assert (target / "config.json").read_text() == '{"model_type": "bert"}'


def test_pack_without_the_checkpoint_says_what_to_run(bundle_module, tmp_path):
    with pytest.raises(SystemExit, match="get-models.sh"):
        bundle_module.pack(tmp_path / ".gpu", tmp_path / "none", tmp_path)
