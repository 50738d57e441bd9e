"""`maw-rerank push` and CrossEncoderWithMAW.push_to_hub, offline: HfApi.create_repo / upload_folder are replaced by
fakes that keep what would be uploaded, every socket connection fails the test, and the Hub's errors end in one
line naming the repo and what to do."""

from __future__ import annotations

import json
import shutil
import socket

import httpx2
import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub import errors as hub_errors

from maw_reranker.cli.main import main
from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
from maw_reranker.experiments.eval_run import EvalOptions, run_eval
from maw_reranker.train.trainer import Trainer
from tests.train.helpers import options, tiny_model_dir, write_task

REPO = "someone/maw-tiny"
PAIRS = [("apple story", "apple the of apples"), ("tiger story", "tiger is tigers"), ("castle story", "ocean with")]
EXPECTED = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "maw_config.json",
            "maw_model.safetensors", "maw_cross_encoder.json", "README.md", "maw_card.json", "eval_results.json"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained tiny MAW run (final/ and best/), final/ evaluated once (its card shows the result)."""
    tmp = tmp_path_factory.mktemp("push")
    task = write_task(tmp / "t")
    result = Trainer(options(tmp, task, tiny_model_dir(tmp / "m"), maw={"gating_mode": "learned", "depth_dim": 4},
                             trainable="top", max_steps=2, holdout_queries=4)).run()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # eval's run folder goes under the working folder
        run_eval(EvalOptions(dataset=str(task["dataset"]), split="train", candidates=str(task["run"]),
                             model=str(result.final_model), progress=False, standard_measures=False,
                             measures=["nDCG@10"], plots=False, max_length=32))
    return result.output_dir


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """Fakes of HfApi's calls; ``hub.calls`` and a copy of each uploaded folder; no socket may connect."""

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    class Hub:
        calls: list = []
        error: BaseException | None = None
        uploaded = tmp_path / "uploaded"

    def create_repo(self, repo_id, **kw):
        Hub.calls.append(("create_repo", repo_id, kw))
        if Hub.error is not None:
            raise Hub.error
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kw):
        Hub.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        Hub.calls.append(("upload_folder", repo_id, kw))
        shutil.copytree(folder_path, Hub.uploaded)  # the temporary folder is gone after the push
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc", "pr_url": None})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    Hub.calls = []
    return Hub


def test_push_a_run_folder_uploads_the_saved_model_with_its_card(trained, hub, capsys):
    assert main(["push", "--model", str(trained), "--repo_id", REPO, "--license", "apache-2.0"]) == 0
    out = capsys.readouterr().out
    assert f"to {REPO} (private when created)" in out and "commit/abc" in out
    names = [c[0] for c in hub.calls]
    assert names == ["create_repo", "upload_folder"]
    assert hub.calls[0][2]["private"] is True and hub.calls[0][2]["exist_ok"] is True
    assert "Upload MAW cross-encoder (gating learned, depth 4" in hub.calls[1][2]["commit_message"]
    files = {p.name for p in hub.uploaded.iterdir()}
    assert EXPECTED <= files, EXPECTED - files
    card = ModelCard.load(hub.uploaded / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-ranking"
    assert card.text.startswith(f"\n# {REPO}") or f"# {REPO}" in card.text
    assert f'from_pretrained("{REPO}")' in card.text
    assert "| saved model | final |" in card.text and "| t (train) | nDCG@10 |" in card.text
    assert json.loads((hub.uploaded / "eval_results.json").read_text()) == \
        json.loads((trained / "final" / "eval_results.json").read_text())
    # what was uploaded loads back and scores as the saved model does
    saved = CrossEncoderWithMAW.from_pretrained(trained / "final", device="cpu")
    again = CrossEncoderWithMAW.from_pretrained(hub.uploaded, device="cpu")
    assert again.maw_config == saved.maw_config
    np.testing.assert_allclose(again.predict(PAIRS), saved.predict(PAIRS), rtol=1e-6, atol=1e-6)
    assert "license" not in ModelCard.load(trained / "final" / "README.md").data.to_dict()  # local folder unchanged


def test_push_options_best_public_branch(trained, hub, capsys):
    assert main(["push", "--model", str(trained), "--repo_id", REPO, "--run_model", "best", "--no-private",
                 "--revision", "v1", "--commit_message", "first"]) == 0
    create, branch, upload = hub.calls
    assert create[2]["private"] is False and branch[2]["branch"] == "v1"
    assert upload[2]["revision"] == "v1" and upload[2]["commit_message"] == "first"
    assert "| saved model | best |" in (hub.uploaded / "README.md").read_text()


def test_python_push_to_hub(trained, hub):
    model = CrossEncoderWithMAW.from_pretrained(trained / "final", device="cpu")
    url = model.push_to_hub(REPO)
    assert url.endswith("commit/abc") and hub.calls[0][2]["private"] is True
    text = (hub.uploaded / "README.md").read_text()
    assert "No record of training" in text  # nothing passed: the card claims nothing
    assert {"maw_config.json", "maw_model.safetensors", "README.md", "model.safetensors"} <= \
        {p.name for p in hub.uploaded.iterdir()}


def test_dry_run_uploads_nothing(trained, hub, capsys):
    assert main(["push", "--model", str(trained / "final"), "--repo_id", REPO, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert hub.calls == [] and "dry run: would push" in out and "maw_model.safetensors" in out and "README.md" in out


def _http_error(cls, status, message="denied"):
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return cls(message, response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("error,expected", [
    (lambda: _http_error(hub_errors.HfHubHTTPError, 401), "HTTP 401"),
    (lambda: _http_error(hub_errors.HfHubHTTPError, 403, "You don't have the rights"), "write access to 'someone'"),
    (lambda: _http_error(hub_errors.RepositoryNotFoundError, 404), "HTTP 404"),
    (lambda: _http_error(hub_errors.HfHubHTTPError, 503), "run again later"),
    (lambda: hub_errors.LocalTokenNotFoundError("no token"), "hf auth login"),
    (lambda: hub_errors.OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE"),
    (lambda: httpx2.ConnectError("[Errno -3] name resolution failed"), "cannot be reached"),
])
def test_hub_errors_end_in_one_line(trained, hub, capsys, error, expected):
    hub.error = error()
    assert main(["push", "--model", str(trained / "final"), "--repo_id", REPO]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("maw-rerank push: error: cannot push to someone/maw-tiny")
    assert expected in err and "Traceback" not in err and "unexpected" not in err


@pytest.mark.parametrize("argv,message", [
    (["--repo_id", "bad id with spaces"], "is not a Hub repo id"),
    (["--repo_id", ""], "option 'repo_id' is empty"),
    (["--repo_id", REPO, "--base_model", "/some/path"], "option 'base_model'"),
])
def test_bad_options_exit_2(trained, hub, capsys, argv, message):
    assert main(["push", "--model", str(trained / "final"), *argv]) == 2
    assert message in capsys.readouterr().err and hub.calls == []


def test_folder_without_a_model(tmp_path, hub, capsys):
    (tmp_path / "final").mkdir()
    assert main(["push", "--model", str(tmp_path), "--repo_id", REPO]) == 1
    err = capsys.readouterr().err
    assert "neither a saved model folder" in err and hub.calls == []


@pytest.fixture()
def local_hub(monkeypatch, tmp_path):
    """The real HfApi against a Hub stand-in on 127.0.0.1 that answers every request with ``status`` (nothing
    leaves the machine); ``status=None``: a closed port (connection refused); ``"offline"``: HF_HUB_OFFLINE."""
    import http.server
    import threading

    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved token of the machine's user
    monkeypatch.delenv("HF_TOKEN", raising=False)
    servers = []

    def start(status):
        # tests/conftest.py switches the Hub off (HF_HUB_OFFLINE=1); the stand-in is on this machine
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", status == "offline")
        if status == "offline":
            return
        if status is None:
            with socket.socket() as probe:  # a port nobody listens on
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
            return

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status,expected", [(401, "HTTP 401"), (403, "HTTP 403"), (None, "cannot be reached"),
                                             ("offline", "unset HF_HUB_OFFLINE")])
def test_real_hub_client_errors_end_in_one_line(trained, local_hub, capsys, status, expected):
    local_hub(status)
    assert main(["push", "--model", str(trained / "final"), "--repo_id", REPO, "--token", "hf_not_a_real_token"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot push to {REPO}" in err and expected in err, err


def test_a_pushed_repo_loads_back_by_its_id(trained, hub, tmp_path):
    """What push uploads, placed in a Hugging Face cache under the repo id, loads with from_pretrained(repo id)
    (HF_HUB_OFFLINE=1, in a subprocess) with its MAW settings and trained parameters."""
    from tests.hub_cache import run_offline, seed_hub_cache

    CrossEncoderWithMAW.from_pretrained(trained / "final", device="cpu").push_to_hub(REPO)
    hf_home = tmp_path / "hf"
    seed_hub_cache(hf_home, REPO, hub.uploaded)
    expected = CrossEncoderWithMAW.from_pretrained(trained / "final", device="cpu").predict(PAIRS)
    code = ("import json; from maw_reranker import CrossEncoderWithMAW as C\n"
            f"m = C.from_pretrained({REPO!r}, device='cpu')\n"
            f"print(json.dumps({{'scores': m.predict({PAIRS!r}).tolist(), 'mode': m.maw_config.gating_mode}}))")
    out = run_offline(hf_home, ["-c", code], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mode"] == "learned"
    np.testing.assert_allclose(got["scores"], expected, atol=1e-6)
