"""What a trained model's card says of the run that produced it: the facts the trainer passes down to
``CrossEncoderWithMAW.save_pretrained(card=...)`` (``cross_encoder/card.py`` renders them)."""

from __future__ import annotations

from typing import Optional

from maw_reranker.config.sections import resolve_model_path
from maw_reranker.cross_encoder.card import CardInfo, base_card_metadata, is_hub_id
from maw_reranker.utils.provenance import command_line


def base_model_of(model: str) -> tuple[Optional[str], dict]:
    """The hub id the training started from (``model`` itself when it is one, else what the starting folder's own
    card names) and that card's metadata (license, language), or (None, {}) when nothing is known."""
    try:
        path = resolve_model_path(model)
    except (ValueError, OSError):
        return None, {}
    meta = base_card_metadata(path)
    if is_hub_id(path):
        return path, meta
    return meta.get("base_model") if is_hub_id(meta.get("base_model")) else None, meta


def hub_datasets(opts) -> list[str]:
    """Training data that the Hub can link to: a hub ``hf_dataset`` (``ID[:CONFIG]``)."""
    spec = (getattr(opts, "hf_dataset", None) or "").split(":")[0]
    return [spec] if getattr(opts, "source", None) == "hf" and is_hub_id(spec) else []


def training_card(opts, description: dict, counts: dict, *, saved: str, output_dir, steps: int,
                  train_seconds: Optional[float] = None, best: Optional[dict] = None) -> CardInfo:
    """The card of a model saved by a training run: ``saved`` is ``final`` or ``best``; ``best`` the dev selection
    (step, measure, value, dev set)."""
    base, meta = base_model_of(opts.model)
    run = {"saved": saved, "output_dir": str(output_dir), "steps": steps, "command": command_line()}
    if train_seconds is not None:
        run["train_seconds"] = round(float(train_seconds), 1)
    if best:
        run.update(best_metric=best.get("value"), best_step=best.get("step"), dev_measure=best.get("measure"),
                   dev_set=best.get("dev_set"))
    language = meta.get("language")
    return CardInfo(base_model=base, training=opts.to_dict(), training_data=dict(description or {}),
                    training_run={k: v for k, v in run.items() if v is not None}, parameters=dict(counts or {}),
                    datasets=hub_datasets(opts), license=meta.get("license"),
                    language=[language] if isinstance(language, str) else language)
