"""The portable checkpoint (cross_encoder/portable.py): a folder saved by CrossEncoderWithMAW.save_pretrained loads,
with the package's scores, through transformers' remote code and sentence-transformers in a Python where
maw_reranker cannot be imported; the package itself still loads it; the file is generated from the package's code."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.cross_encoder.portable import (AUTO_MAP, EMBEDDED_MODULES, MODELING_NAME, modeling_source,
                                                 write_portable_code)
from maw_reranker.cross_encoder.portable_model import portable_model_class
from maw_reranker.maw.config import GATING_MODES
from maw_reranker.maw.patcher import maw_layers, maw_named_parameters
from maw_reranker.utils.tiny_models import TINY_ARCHITECTURES, save_tiny_cross_encoder
from tests.hub_cache import offline_env, seed_hub_cache

WORKER = Path(__file__).with_name("portable_worker.py")
WORDS = "what is maw attention depth the weather nice today a cross encoder scores pairs of text".split()
PAIRS = [("what is maw", "maw attention depth"),
         ("what is maw", "the weather is nice today and a cross encoder scores pairs of text"),
         ("a", "b"),
         ("cross encoder", "scores pairs of text with attention at every depth"),
         ("the weather today", "nice")]
BATCH = 2  # several padded batches in predict
# Every gating mode with split depths; and depth_source `project` (low-rank deltas per depth) twice on the three
# adapters (BERT's, which RoBERTa, XLM-R and ELECTRA share; DeBERTa's score bias; ModernBERT's rotary deltas).
VARIANTS = {mode: {"gating_mode": mode} for mode in GATING_MODES}
VARIANTS["learned-project-per_head"] = {"gating_mode": "learned", "depth_source": "project", "per_head": True,
                                        "depth_rank": 2}
VARIANTS["router-project"] = {"gating_mode": "router", "depth_source": "project", "depth_rank": 2}
PROJECT_ARCHITECTURES = ("bert", "deberta-v2", "modernbert")
CASES = [f"{arch}-{variant}" for arch in TINY_ARCHITECTURES for variant in VARIANTS
         if "project" not in variant or arch in PROJECT_ARCHITECTURES]
RESAVED = {f"{arch}-gate" for arch in TINY_ARCHITECTURES}  # the remote model's own save_pretrained, reloaded
HUB_CASES = ("bert-gate", "modernbert-router-project")  # loaded by hub id from an offline Hugging Face cache
ATOL = 1e-5


def _maw_config(variant: str) -> MAWConfig:
    # D=4 fits ModernBERT's split (whole rotary pairs of a width-8 head); both layers patched (ModernBERT: a global
    # and a local one); alpha 0.5 so that MAW moves the scores well past the tolerance.
    return MAWConfig(depth_dim=4, maw_strength=0.5, inject_last_k=2, maw_random_seed=3, **VARIANTS[variant])


def _logits(encoder: CrossEncoderWithMAW) -> list[float]:
    with torch.no_grad():
        return encoder(**encoder.tokenize(PAIRS)).tolist()


def _build(root: Path) -> dict:
    """Every case's saved folder and the package's scores of it."""
    cases = {}
    for arch in TINY_ARCHITECTURES:
        base = save_tiny_cross_encoder(root / f"base-{arch}", WORDS, model_type=arch, initializer_range=0.3)
        plain = _logits(CrossEncoderWithMAW.from_pretrained(base, maw=None, device="cpu"))
        for variant in VARIANTS:
            case = f"{arch}-{variant}"
            if case not in CASES:
                continue
            encoder = CrossEncoderWithMAW.from_pretrained(base, maw=_maw_config(variant), device="cpu")
            generator = torch.Generator().manual_seed(len(cases))
            with torch.no_grad():  # trained-looking MAW parameters: loading the wrong ones would show
                for _, param in maw_named_parameters(encoder.model):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            folder = encoder.save_pretrained(root / case)
            cases[case] = {"id": case, "dir": str(folder), "pairs": PAIRS, "max_length": encoder.max_length,
                           "batch_size": BATCH, "ref": _logits(encoder),
                           "pred": encoder.predict(PAIRS, batch_size=BATCH).tolist(), "plain": plain,
                           "base": str(base), "variant": variant}
            if case in RESAVED:
                cases[case]["resave"] = str(root / f"resaved-{case}")
    return cases


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """(cases, report): the folders, and what a Python without maw_reranker got from each (one process for all).

    One thread here and there: tiny models gain nothing from more, and on a busy machine threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("portable")
    cases = _build(root)
    hf_home = root / "hf-home"
    for case in HUB_CASES:  # also by hub id, from a Hugging Face cache (offline)
        seed_hub_cache(hf_home, f"maw-test/{case}", Path(cases[case]["dir"]))
        cases[f"hub:{case}"] = {**cases[case], "id": f"hub:{case}", "dir": f"maw-test/{case}"}
        cases[f"hub:{case}"].pop("resave", None)
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps(list(cases.values())))
    outside = root / "elsewhere"  # the working folder: not the repository
    outside.mkdir()
    env = {key: value for key, value in offline_env(hf_home).items() if not key.startswith("PYTHON")}
    env.update(TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(root / "hf-modules"), TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-I", str(WORKER), str(manifest), str(root / "report.json")],
                          cwd=outside, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    yield cases, json.loads((root / "report.json").read_text())
    torch.set_num_threads(threads)


def _entry(portable, case):
    cases, report = portable
    assert report["maw_reranker_blocked"], "the worker could import maw_reranker: the check would prove nothing"
    assert report["maw_modules_loaded"] == []
    return cases[case], report["cases"][case]


@pytest.mark.parametrize("case", CASES + [f"hub:{case}" for case in HUB_CASES])
def test_transformers_remote_code_scores_as_the_package(portable, case):
    expected, got = _entry(portable, case)
    assert "auto_error" not in got, got["auto_error"]
    assert got["auto_class"].startswith("transformers_modules.") and got["auto_class"].endswith(
        ".modeling_maw.MAWForSequenceClassification")
    assert len(got["maw_layers"]) == 2
    # MAW changes the scores (so equal scores below are not the backbone's alone) ...
    assert np.abs(np.array(expected["ref"]) - np.array(expected["plain"])).max() > 1e-3
    # ... and the folder's own code reproduces them, with and without autograd.
    np.testing.assert_allclose(got["auto"], expected["ref"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["auto_grad"], expected["ref"], atol=ATOL, rtol=0)
    if "resave" in expected:  # the remote model's save_pretrained writes a folder that loads the same way
        np.testing.assert_allclose(got["resaved"], expected["ref"], atol=ATOL, rtol=0)
        assert (Path(expected["resave"]) / MODELING_NAME).is_file()


@pytest.mark.parametrize("case", CASES + [f"hub:{case}" for case in HUB_CASES])
def test_sentence_transformers_scores_as_the_package(portable, case):
    expected, got = _entry(portable, case)
    if not portable[1]["sentence_transformers"]:
        pytest.skip("sentence-transformers is not installed")
    assert "st_error" not in got, got["st_error"]
    assert len(got["st_maw_layers"]) == 2
    np.testing.assert_allclose(got["st"], expected["pred"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_the_package_still_loads_the_folder(portable, case):
    expected, _ = _entry(portable, case)
    again = CrossEncoderWithMAW.from_pretrained(expected["dir"], device="cpu")
    assert again.maw_config == _maw_config(expected["variant"])
    np.testing.assert_allclose(_logits(again), expected["ref"], atol=ATOL, rtol=0)


def test_the_weights_and_config_are_those_of_a_plain_save(portable, tmp_path):
    from safetensors.torch import load_file

    cases, _ = portable
    case = cases["bert-gate"]
    folder, base = Path(case["dir"]), Path(case["base"])
    saved, original = load_file(str(folder / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    plain = CrossEncoderWithMAW.from_pretrained(base, maw=None, device="cpu").save_pretrained(tmp_path / "plain")
    assert not (plain / MODELING_NAME).exists()
    plain_config = json.loads((plain / "config.json").read_text())
    maw_config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in plain_config
    assert maw_config.pop("auto_map") == AUTO_MAP
    assert maw_config == plain_config


def test_without_trust_remote_code_transformers_loads_the_plain_model(portable):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    case = portable[0]["bert-stat"]
    model = AutoModelForSequenceClassification.from_pretrained(case["dir"]).eval()
    assert type(model).__module__.startswith("transformers.models.")
    tokenizer = AutoTokenizer.from_pretrained(case["dir"])
    batch = tokenizer([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(model(**batch).logits[:, 0].numpy(), case["plain"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_the_portable_class_inside_the_package(portable, arch):
    case = portable[0][f"{arch}-router-project"]
    cls = portable_model_class(json.loads((Path(case["dir"]) / "config.json").read_text())["model_type"])
    model = cls.from_pretrained(case["dir"]).eval()
    encoder = CrossEncoderWithMAW(model, CrossEncoderWithMAW.from_pretrained(case["dir"], maw=None).tokenizer)
    assert len(maw_layers(model)) == 2  # inside the package, the package's own patcher and layers
    assert model.maw_config == _maw_config("router-project")
    np.testing.assert_allclose(_logits(encoder), case["ref"], atol=ATOL, rtol=0)


# -- the generator ------------------------------------------------------------------------------------------------
def _package_imports(tree):
    def imports_package(node):
        if isinstance(node, ast.ImportFrom):
            return (node.module or "").split(".")[0] == "maw_reranker"
        return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "maw_reranker" for a in node.names)

    return [node for node in ast.walk(tree) if imports_package(node)]


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2",
                                        "modernbert"])
def test_the_file_is_the_package_source(model_type):
    text = modeling_source(model_type)
    tree = ast.parse(text)
    assert not _package_imports(tree)
    assert text.rstrip().endswith(f"MAWForSequenceClassification = portable_model_class({model_type!r})")
    for name in EMBEDDED_MODULES:
        source = inspect.getsource(importlib.import_module(name))
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not _package_imports(node):
                assert ast.get_source_segment(source, node) in text, f"{name}.{node.name} is not embedded verbatim"


def test_the_file_is_regenerated_on_every_save(portable, tmp_path):
    folder = Path(portable[0]["electra-stat"]["dir"])
    assert (folder / MODELING_NAME).read_text() == modeling_source("electra")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="no portable MAW checkpoint for model type 'gpt2'"):
        write_portable_code(tmp_path)
