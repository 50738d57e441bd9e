"""Our offline set-up for the benchmarks: where they find models and data on the development machine and the lent
GPU machine, which have no internet. This is how we measure here, not the product's way (users name models by hub
id with the hub reachable, and data by official dataset names).

* Models are named by hub id, as users name them (``CROSS_ENCODER``, ``ENCODER``), and resolve from the Hugging Face
  cache: importing this module sets ``HF_HUB_OFFLINE=1`` unless it is set already (so it must be imported before
  transformers / huggingface_hub read their constants). ``bash ../shared/tools/seed-hf-cache.sh`` seeds that cache
  with the checkpoints of ``../shared/tools/get-models.sh`` (the cross-encoder is its INT8-dequantized copy:
  DL19 nDCG@10 0.7216, not bit-identical to the hub original).
* Local data copies live under ``$MAW_DATA`` (default: ``../shared/data`` beside the repository), the same root the
  configs of ``benchmarks/configs`` read.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-12-v2"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
SEED_HINT = "bash ../shared/tools/seed-hf-cache.sh (seeds the Hugging Face cache; HF_HUB_OFFLINE=1 reads it)"


def data_root() -> Path:
    """``$MAW_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.path.expanduser(os.environ.get("MAW_DATA") or str(REPO.parent / "shared" / "data")))


def model_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The folder of a model: a local folder as it is; a hub id's snapshot in the Hugging Face cache (never
    downloaded here); None when neither is there."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") != 1:
        return None  # spelled like a path (or not like ORG/NAME): not a hub id
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (LocalEntryNotFoundError), or a bad repo id
        return None
