"""Pushing a saved model to the Hugging Face Hub: ``create_repo`` + ``upload_folder`` of a ``save_pretrained`` folder.

What is uploaded is exactly what ``save_pretrained`` writes (config, weights, tokenizer, ``maw_config.json``,
``maw_model.safetensors``, ``maw_cross_encoder.json``, the card ``README.md`` with ``maw_card.json`` and
``eval_results.json``), written to a temporary folder first. The repo is created private unless asked otherwise;
an existing repo keeps the visibility it has. ``CrossEncoderWithMAW.from_pretrained("namespace/name")`` loads it back.

Every failure of the Hub (no token, refused token, no write access, no network, offline mode, bad repo id) is a
:class:`HubError` whose message is one line naming the repo id and what to do.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

from maw_reranker.utils.errors import OptionError

logger = logging.getLogger(__name__)
LOGIN_HINT = "log in with `hf auth login`, or set HF_TOKEN (or pass a token) with write access"
_CONNECTION_NAMES = {"ConnectionError", "TransportError", "RequestError", "NetworkError", "ConnectError",
                     "TimeoutException", "Timeout", "ConnectTimeout", "ReadTimeout", "ProxyError", "SSLError"}


class HubError(OSError):
    """The Hub did not take the push; the message is one line: the repo id, what happened, what to do."""


def check_repo_id(repo_id: str, option: str = "repo_id") -> str:
    """``namespace/name`` (or ``name``, for the token's own namespace) as the Hub accepts it; OptionError if not."""
    repo_id = str(repo_id or "").strip()
    if not repo_id:
        raise OptionError(f"option '{option}' is empty: give the Hub repo as namespace/name")
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as exc:  # HFValidationError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise OptionError(f"option '{option}': {repo_id!r} is not a Hub repo id ({first}); use namespace/name, "
                          "e.g. my-user/maw-reranker") from None
    return repo_id


def push_to_hub(model, repo_id: str, private: bool = True, commit_message: Optional[str] = None,
                token: Optional[str] = None, revision: Optional[str] = None, create_pr: bool = False, card=None,
                exist_ok: bool = True) -> str:
    """Save ``model`` (a ``CrossEncoderWithMAW``) with ``card`` into a temporary folder and push that folder."""
    repo_id = check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="maw-push-") as tmp:
        folder = stage(model, repo_id, tmp, card)
        return push_folder(folder, repo_id, private=private, commit_message=commit_message, token=token,
                           revision=revision, create_pr=create_pr, exist_ok=exist_ok)


def stage(model, repo_id: str, parent: str | os.PathLike, card=None) -> Path:
    """The folder that would be uploaded: ``save_pretrained`` into ``parent`` with the card titled by the repo id."""
    from maw_reranker.cross_encoder.card import write_card

    folder = model.save_pretrained(Path(parent) / repo_id.split("/")[-1], card=card)
    write_card(folder, title=repo_id)  # the card on the Hub is titled, and loads, by its repo id
    return folder


def is_saved_model(folder: Path) -> bool:
    """A folder that ``CrossEncoderWithMAW.from_pretrained`` loads: a transformers checkpoint (config.json)."""
    return (folder / "config.json").is_file()


def find_saved_model(path: str | os.PathLike, run_model: str = "final", option: str = "model") -> Path:
    """``path`` when it is a saved model folder; in a training run folder, its ``run_model`` subfolder (``final`` or
    ``best``); else a FileNotFoundError naming what was looked for."""
    folder = Path(os.path.expanduser(str(path)))
    if not str(path).strip():
        raise OptionError(f"option '{option}' is empty: give a saved model folder or a training run folder")
    if not folder.is_dir():
        raise FileNotFoundError(f"option '{option}': {folder} is not a folder")
    if is_saved_model(folder):
        return folder
    inner = folder / run_model
    if is_saved_model(inner):
        return inner
    others = [p.name for p in sorted(folder.iterdir()) if p.is_dir() and is_saved_model(p)]
    also = f" (it holds {', '.join(others)}: pick one with run_model)" if others else ""
    raise FileNotFoundError(f"option '{option}': {folder} is neither a saved model folder (no config.json) nor a "
                            f"training run folder with a saved model in {run_model}/{also}")


def default_commit_message(folder: str | os.PathLike) -> str:
    from maw_reranker.cross_encoder.card import _maw_settings

    maw = _maw_settings(Path(folder))
    if not maw:
        return "Upload cross-encoder (no MAW layers) with maw-reranker"
    return (f"Upload MAW cross-encoder (gating {maw.get('gating_mode')}, depth {maw.get('depth_dim')}, "
            f"alpha {maw.get('maw_strength')}) with maw-reranker")


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = True, commit_message: Optional[str] = None,
                token: Optional[str] = None, revision: Optional[str] = None, create_pr: bool = False,
                exist_ok: bool = True) -> str:
    """``HfApi.create_repo`` (private by default) then ``upload_folder`` of ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    api = HfApi(token=token)
    message = commit_message or default_commit_message(folder)
    try:
        api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=exist_ok)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message, token=token,
                                 repo_type="model", revision=revision, create_pr=create_pr or None)
    except Exception as exc:  # noqa: BLE001 - translated when it is the Hub's; anything else propagates as it is
        error = hub_error(exc, repo_id)
        if error is None:
            raise
        raise error from exc
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or str(info)
    logger.info("pushed %s to %s (%s)", folder, repo_id, url)
    return str(url)


def _first_line(text) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[0] if lines else ""


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError)) or any(
        klass.__name__ in _CONNECTION_NAMES for klass in type(exc).__mro__)


def hub_error(exc: BaseException, repo_id: str) -> Optional[HubError]:
    """The one-line :class:`HubError` for a failure of the Hub while pushing ``repo_id``; None when ``exc`` is not
    the Hub's (a bug, a full disk), which then propagates as it is."""
    from huggingface_hub import errors

    where = f"push to {repo_id}"
    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(f"cannot {where}: the Hub is switched off here (HF_HUB_OFFLINE is set); unset HF_HUB_OFFLINE "
                        "and run again on a machine with network access")
    if isinstance(exc, errors.LocalTokenNotFoundError):
        return HubError(f"cannot {where}: no Hugging Face token found; {LOGIN_HINT}")
    if isinstance(exc, errors.HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        server = _first_line(getattr(exc, "server_message", None)) or _first_line(exc)
        namespace = repo_id.split("/")[0] if "/" in repo_id else "your namespace"
        if isinstance(exc, errors.RevisionNotFoundError):
            return HubError(f"cannot {where}: the revision does not exist ({server}); name an existing branch, or "
                            "leave the revision out")
        if status == 401:
            return HubError(f"cannot {where}: the Hub did not accept the token (HTTP 401); {LOGIN_HINT}")
        if status == 403:
            return HubError(f"cannot {where}: the token may not write there (HTTP 403: {server}); use a token with "
                            f"write access to '{namespace}', or push to a namespace of yours")
        if status == 404 or isinstance(exc, errors.RepositoryNotFoundError):
            return HubError(f"cannot {where}: the Hub found no such repo or namespace (HTTP 404); check the spelling "
                            f"of '{namespace}' and that your token may create repos there ({LOGIN_HINT})")
        if status == 429:
            return HubError(f"cannot {where}: the Hub limits the request rate (HTTP 429); wait and run again")
        if status is not None and status >= 500:
            return HubError(f"cannot {where}: the Hub failed (HTTP {status}: {server}); run again later")
        return HubError(f"cannot {where}: the Hub refused it (HTTP {status}: {server}); fix what it says and run "
                        "again")
    if _is_connection_error(exc):
        return HubError(f"cannot {where}: the Hub cannot be reached ({type(exc).__name__}: {_first_line(exc)}); "
                        "check the network connection or proxy (and HF_ENDPOINT if set), then run again")
    return None
