"""Where a model's files come from, and which MAW a load ends up with.

* :func:`model_file`: a file of a local folder or of a hub repo (downloaded into, or with ``HF_HUB_OFFLINE=1``
  read from, the Hugging Face cache), or None when the model has no such file.
* :func:`hub_error`: the one line for a model that could not be fetched (no network, unknown repo, no access).
* :func:`reconcile_maw`: the saved ``maw_config.json`` is the truth (as PEFT's saved adapter config is): a requested
  config that differs only in settings (strength, seeds, sharpness, temperature) keeps the trained parameters and
  applies the new values; one that differs in structure is an error naming the fields, unless MAW is asked fresh.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from maw_reranker.maw.config import CONFIG_NAME, MAWConfig

OFFLINE_HINT = ("offline, give a local model folder, or put the model in the Hugging Face cache (huggingface-cli "
                "download NAME where there is internet) and set HF_HUB_OFFLINE=1")


class ModelLoadError(OSError):
    """A model (or one of its files) could not be loaded; the message names the model and the way out."""


class MAWMismatchError(ValueError):
    """A requested MAW structure differs from the one a saved model was trained with."""


def is_local(name_or_path) -> bool:
    return Path(os.path.expanduser(str(name_or_path))).is_dir()


# Keywords of from_pretrained that also locate a hub repo's other files (MAW files, tokenizer).
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")


def model_file(name_or_path, filename: str, **hub) -> Path | None:
    """``filename`` of a local model folder or hub repo, or None when the model has none. ``hub``: revision, token,
    cache_dir, local_files_only, as from_pretrained takes them."""
    if is_local(name_or_path):
        path = Path(os.path.expanduser(str(name_or_path))) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(str(name_or_path), filename, **hub))
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: first
        # Offline (or no network) and the file is not in the cache: a plain model simply has none, but a MAW model
        # (its cached config.json names modeling_maw) whose MAW files were never downloaded must not load without them.
        if _cached_maw_model(str(name_or_path), hub):
            raise ModelLoadError(f"model {str(name_or_path)!r}: a MAW model whose {filename} is not in the Hugging "
                                 f"Face cache; download the whole repo (huggingface-cli download "
                                 f"{name_or_path}) where there is internet") from None
        return None
    except EntryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes the one line below
        raise hub_error(name_or_path, exc) from None


def _cached_maw_model(repo_id: str, hub: dict) -> bool:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub.get("cache_dir"),
                                    revision=hub.get("revision"))
    if not isinstance(cached, str):
        return False
    try:
        auto_map = json.loads(Path(cached).read_text(encoding="utf-8")).get("auto_map") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return any("modeling_maw" in str(target) for target in auto_map.values())


def hub_error(name, exc: BaseException) -> ModelLoadError:
    """The one-line error for a model that could not be fetched from the hub (or found in its cache)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        why = "the repo is gated: accept its terms on huggingface.co and log in (huggingface-cli login)"
    elif isinstance(exc, RepositoryNotFoundError):
        why = "no such repo on the Hugging Face hub (or it is private: log in with huggingface-cli login)"
    elif os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        why = "not in the Hugging Face cache, and HF_HUB_OFFLINE is set (nothing is downloaded)"
    else:
        from maw_reranker.utils.errors import network_reason

        why = f"not in the Hugging Face cache and could not be downloaded: {network_reason(exc)}"
    return ModelLoadError(f"model {str(name)!r}: {why}; {OFFLINE_HINT}")


def saved_maw_config(name_or_path, **hub) -> MAWConfig | None:
    """The MAW settings a model folder or hub repo saved, or None (a plain checkpoint)."""
    if is_local(name_or_path):
        path = model_file(name_or_path, CONFIG_NAME)
    else:
        path = _hub_maw_config(str(name_or_path), tuple(sorted(hub.items())))
    return MAWConfig.load(path.parent) if path is not None else None


@functools.lru_cache(maxsize=64)
def _hub_maw_config(repo_id: str, hub: tuple) -> Path | None:
    # Once per process and repo: a suite plans many runs of one model, and each lookup may go to the network.
    return model_file(repo_id, CONFIG_NAME, **dict(hub))


def reconcile_maw(saved: MAWConfig | None, requested, num_layers: int, fresh_maw: bool, where: str):
    """The MAW config to build and whether the saved parameters load into it: ``(config, load_saved)``.

    ``requested`` is ``"auto"`` (the saved config), None (unpatched) or a MAWConfig.
    """
    if requested == "auto":
        return saved, saved is not None and not fresh_maw
    if requested is None or saved is None or fresh_maw:
        return requested, False
    diff = saved.structure_diff(requested, num_layers)
    if diff:
        shown = ", ".join(f"{f} {_field(saved, f, num_layers)} -> {_field(requested, f, num_layers)}" for f in diff)
        raise MAWMismatchError(f"{where}: the requested MAW differs in structure from the one saved with the model "
                               f"({shown}); its trained MAW parameters would not load. Load it with maw='auto' (or "
                               f"the saved settings), or ask for fresh MAW (fresh_maw=True; CLI: --fresh-maw)")
    return requested, True


def _field(config: MAWConfig, name: str, num_layers: int):
    if name == "layers":
        from maw_reranker.maw.config import resolve_layers

        return resolve_layers(config, num_layers)
    return getattr(config, name)
