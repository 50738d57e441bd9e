"""Loading is faithful: the saved MAW config and parameters are the truth. Settings that change no parameter load
the trained ones and apply; another structure is an error unless fresh MAW is asked; nothing trained is dropped."""

import json

import numpy as np
import pytest
import torch

from maw_reranker import CrossEncoderWithMAW, MAWConfig
from maw_reranker.cross_encoder.loading import MAWMismatchError
from maw_reranker.maw.patcher import maw_state_dict
from maw_reranker.utils.tiny_models import save_tiny_cross_encoder
from tests.cross_encoder.test_model import PAIRS, WORDS, perturb_maw

TRAINED = MAWConfig(gating_mode="gate", depth_dim=3, maw_strength=0.6, maw_random_seed=5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_cross_encoder(tmp_path_factory.mktemp("base"), WORDS, initializer_range=0.3)


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """A saved model whose MAW gate parameters are far from their (zero) initialisation, as after training."""
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=TRAINED, device="cpu")
    perturb_maw(model)
    out = model.save_pretrained(tmp_path_factory.mktemp("trained") / "model")
    return out, maw_state_dict(model.model)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change", [{"maw_strength": 0.3}, {"maw_random_seed": 9}, {"stat_sharpness": 1.0},
                                    {"router_tau": 0.5}, {"inject_last_k": 1, "layers": [-1]}])
def test_settings_that_change_no_parameter_keep_the_trained_ones(trained, change):
    path, state = trained
    wanted = TRAINED.replace(**change)
    model = CrossEncoderWithMAW.from_pretrained(path, maw=wanted, device="cpu")
    assert _same_state(maw_state_dict(model.model), state)  # today's code started these fresh (zeros)
    assert model.maw_config == wanted  # ... and the requested values apply
    reference = CrossEncoderWithMAW.from_pretrained(path, device="cpu")  # the saved settings
    if "maw_strength" in change:
        reference.set_maw_strength(change["maw_strength"])
    np.testing.assert_array_equal(model.predict(PAIRS), reference.predict(PAIRS))


@pytest.mark.parametrize("change,field", [({"depth_dim": 4}, "depth_dim"), ({"gating_mode": "learned"}, "gating_mode"),
                                          ({"depth_source": "project"}, "depth_source"),
                                          ({"inject_last_k": 2}, "layers"), ({"gate_hidden": 8}, "gate_hidden")])
def test_another_structure_is_an_error_unless_fresh_maw(trained, change, field):
    path, state = trained
    with pytest.raises(MAWMismatchError, match=rf"{field} .* -> "):
        CrossEncoderWithMAW.from_pretrained(path, maw=TRAINED.replace(**change), device="cpu")
    fresh = CrossEncoderWithMAW.from_pretrained(path, maw=TRAINED.replace(**change), fresh_maw=True, device="cpu")
    assert fresh.maw_config == TRAINED.replace(**change)


def test_fresh_maw_with_the_saved_structure_starts_from_initialisation(trained):
    path, state = trained
    fresh = maw_state_dict(CrossEncoderWithMAW.from_pretrained(path, fresh_maw=True, device="cpu").model)
    last = [k for k in fresh if ".gate.2." in k]  # the gate's output layer starts at zero (uniform weights)
    assert last and all(not fresh[k].any() for k in last) and all(state[k].any() for k in last)


def test_random_weights_follow_the_requested_seed(base_dir, tmp_path):
    cfg = MAWConfig(gating_mode="random", depth_dim=4, maw_random_seed=1)
    CrossEncoderWithMAW.from_pretrained(base_dir, maw=cfg, device="cpu").save_pretrained(tmp_path / "m")
    other = CrossEncoderWithMAW.from_pretrained(tmp_path / "m", maw=cfg.replace(maw_random_seed=2), device="cpu")
    direct = CrossEncoderWithMAW.from_pretrained(base_dir, maw=cfg.replace(maw_random_seed=2), device="cpu")
    assert _same_state(maw_state_dict(other.model), maw_state_dict(direct.model))


def test_missing_maw_weights_are_an_error_naming_the_file(trained, tmp_path):
    import shutil

    path, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / "maw_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="maw_model.safetensors is missing"):
        CrossEncoderWithMAW.from_pretrained(copy, device="cpu")
    with pytest.raises(FileNotFoundError, match=str(copy)):
        CrossEncoderWithMAW.from_pretrained(copy, maw=TRAINED.replace(maw_strength=0.1), device="cpu")
    assert CrossEncoderWithMAW.from_pretrained(copy, fresh_maw=True, device="cpu").maw_config == TRAINED


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"depth_dim": "many"}', '{"no_such_field": 1}'])
def test_a_corrupt_maw_config_is_refused_naming_the_file(trained, tmp_path, text):
    import shutil

    path, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / "maw_config.json").write_text(text)
    with pytest.raises(ValueError, match=str(copy / "maw_config.json")):
        CrossEncoderWithMAW.from_pretrained(copy, device="cpu")


def test_the_run_seed_never_rewrites_a_saved_models_maw(trained, tmp_path):
    from maw_reranker.config.parser import parse_options
    from maw_reranker.experiments.eval_run import EvalOptions, plan_eval
    from tests.data.fixtures import write_tsv_layout

    path, _ = trained
    paths = write_tsv_layout(tmp_path / "col")
    spec = json.dumps({k: v for k, v in TRAINED.to_dict().items() if k != "maw_strength"} | {"maw_strength": 0.3})
    common = {"dataset": str(paths["docs"]), "queries": str(paths["queries"]), "qrels": str(paths["qrels"]),
              "run": str(paths["run"]), "model": str(path), "maw": spec, "output_dir": str(tmp_path / "e")}
    plan = plan_eval(parse_options(EvalOptions, {**common, "seed": 1}))
    assert plan.maw.maw_random_seed == TRAINED.maw_random_seed and plan.maw.maw_strength == 0.3


def test_a_hub_id_loads_offline_from_the_hugging_face_cache(trained, base_dir, tmp_path):
    """Models are named by hub id; with HF_HUB_OFFLINE=1 they come from the cache (here a temporary HF_HOME), MAW
    settings and trained parameters included, in the API and in `maw-rerank eval`."""
    from tests.hub_cache import run_offline, seed_hub_cache

    path, _ = trained
    hf_home = tmp_path / "hf"
    seed_hub_cache(hf_home, "tiny-org/maw-gate", path)
    seed_hub_cache(hf_home, "tiny-org/plain", base_dir)
    expected = CrossEncoderWithMAW.from_pretrained(path, device="cpu").predict(PAIRS)
    code = ("import json, sys; from maw_reranker import CrossEncoderWithMAW as C\n"
            f"pairs = {PAIRS!r}\n"
            "m = C.from_pretrained('tiny-org/maw-gate', device='cpu')\n"
            "p = C.from_pretrained('tiny-org/plain', device='cpu')\n"
            "print(json.dumps({'scores': m.predict(pairs).tolist(), 'mode': m.maw_config.gating_mode, "
            "'plain': p.maw_config is None}))")
    out = run_offline(hf_home, ["-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mode"] == "gate" and got["plain"]
    np.testing.assert_allclose(got["scores"], expected, atol=1e-6)
    from tests.data.fixtures import write_tsv_layout

    data = write_tsv_layout(tmp_path / "col")
    missing = run_offline(hf_home, ["-m", "maw_reranker.cli.main", "eval", "--model", "tiny-org/not-cached",
                                    "--dataset", str(data["docs"]), "--queries", str(data["queries"]), "--run",
                                    str(data["run"]), "--output-dir", str(tmp_path / "e")], cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    line = missing.stderr.strip().splitlines()[-1]
    assert "'tiny-org/not-cached'" in line and "HF_HUB_OFFLINE=1" in line and len(line) < 400, line


def test_gate_hidden_is_no_structure_for_modes_without_an_mlp(base_dir, tmp_path):
    cfg = MAWConfig(gating_mode="learned", depth_dim=3)
    model = CrossEncoderWithMAW.from_pretrained(base_dir, maw=cfg, device="cpu")
    perturb_maw(model)
    model.save_pretrained(tmp_path / "m")
    again = CrossEncoderWithMAW.from_pretrained(tmp_path / "m", maw=cfg.replace(gate_hidden=128), device="cpu")
    assert _same_state(maw_state_dict(again.model), maw_state_dict(model.model))


def test_trust_remote_code_on_a_saved_folder_loads_the_package_way(trained):
    """The folder carries portable remote code too; the package applies its own MAW once, not the embedded copy's."""
    path, state = trained
    model = CrossEncoderWithMAW.from_pretrained(path, trust_remote_code=True, device="cpu")
    assert _same_state(maw_state_dict(model.model), state)


def test_a_cached_maw_repo_without_its_maw_files_is_refused_offline(trained, tmp_path):
    """A MAW repo of which only the transformers files were downloaded must not load silently without its MAW."""
    from tests.hub_cache import run_offline, seed_hub_cache

    path, _ = trained
    hf_home = tmp_path / "hf"
    snapshot = seed_hub_cache(hf_home, "tiny-org/maw-partial", path)
    for name in ("maw_config.json", "maw_model.safetensors", "maw_cross_encoder.json"):
        (snapshot / name).unlink(missing_ok=True)
    code = "from maw_reranker import CrossEncoderWithMAW as C; C.from_pretrained('tiny-org/maw-partial', device='cpu')"
    out = run_offline(hf_home, ["-c", code], cwd=tmp_path)
    assert out.returncode != 0 and "maw_config.json is not in the Hugging Face cache" in out.stderr, out.stderr[-800:]
