"""The model card (``README.md``) of a saved model folder: Hugging Face metadata plus what is known of the model.

This layer knows neither training nor evaluation: the trainer and the evaluation pass their facts down as a
:class:`CardInfo` (plain dicts and strings). The facts are kept beside the weights, so that a card can be rewritten
later (when an evaluation adds results) without loading the model:

* ``maw_card.json``: the :class:`CardInfo` less the evaluation results: base model, the training recipe and data of
  the run that produced the weights, parameter counts, license and language when known;
* ``eval_results.json``: one row per evaluated measure and run folder, added by ``maw-rerank eval`` (and so by
  ``suite`` and ``study``) when they evaluate this folder, updated under a lock and replaced atomically;
* ``README.md``: rendered from the two and ``maw_config.json`` (:func:`render_card`).

A fact the card does not have is said to be unknown, never filled in: a model saved by ``save_pretrained`` in
Python has a card that says it has no record of its training; a model not evaluated since it was saved says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
CARD_INFO_NAME = "maw_card.json"
EVAL_RESULTS_NAME = "eval_results.json"
CARD_VERSION = 1

# `library_name: transformers`: the folder is a standard transformers checkpoint (config.json, weights, tokenizer)
# that AutoModelForSequenceClassification loads as it is (the backbone and head; MAW's settings and parameters are
# in maw_config.json / maw_model.safetensors beside it). The Hub shows its "Use this model" snippet and the
# text-ranking widget for a library it knows; an unknown name such as `maw-reranker` gets neither. The `maw-reranker`
# tag (with `maw`, `cross-encoder`, `reranker`) makes the models of this package findable by tag instead.
LIBRARY_NAME = "transformers"
PIPELINE_TAG = "text-ranking"
TAGS = ("maw", "maw-reranker", "cross-encoder", "reranker")

MAW_SUMMARY = (
    "MAW (Multi-Attention-Weight) attention gives each head of the patched layers `D` attention distributions "
    "instead of one, a *depth* axis made of slices of the head's query and key features (`split`) or low-rank "
    "projections (`project`), and selects or mixes them per example by statistics of the maps or by learned gates, "
    "a router or a GRPO policy. The result is blended with the layer's own attention output, "
    "`O = (1 - alpha) O_orig + alpha O_maw`, so that `alpha = 0` is the original model.")

# The training options shown in the recipe table, in this order (the full options are in a folded block below it).
RECIPE_KEYS = ("model", "trainable", "top_layers", "loss", "source", "dataset", "split", "hf_dataset", "candidates",
               "n_negatives", "num_negatives", "neg_rank_min", "neg_rank_max", "neg_sampling", "sampling_strategy",
               "batch_size", "grad_accum", "max_steps", "epochs", "lr", "maw_lr", "weight_decay", "scheduler",
               "warmup_ratio", "warmup_steps", "precision", "max_length", "seed", "lora_r", "lora_alpha",
               "teacher_model", "teacher_run")
_LORA_KEYS = {"lora_r", "lora_alpha"}
# Keys of an evaluation row (EVAL_RESULTS_NAME): which measure, on what, from which run folder, made how.
EVAL_KEYS = ("dataset", "split", "measure", "value", "queries", "depth", "candidates", "variant", "seed", "precision",
             "run_dir", "command", "date")


@dataclass
class CardInfo:
    """What a model card can say beyond the folder itself; every field may be unknown (empty)."""

    base_model: Optional[str] = None  # hub id of the checkpoint the weights come from (card metadata)
    training: Optional[dict] = None  # the options of the training run that produced the weights
    training_data: Optional[dict] = None  # what that run trained on (the trainer's data description)
    training_run: Optional[dict] = None  # steps, seconds, which saved model (final/best), dev selection, command
    parameters: dict = field(default_factory=dict)  # total / trainable / maw / lora parameter counts
    datasets: list = field(default_factory=list)  # hub dataset ids (card metadata)
    language: Optional[list] = None
    license: Optional[str] = None
    tags: list = field(default_factory=list)  # added to TAGS
    eval_results: list = field(default_factory=list)  # rows with EVAL_KEYS

    def to_dict(self, with_eval: bool = True) -> dict:
        data = dataclasses.asdict(self)
        if not with_eval:
            data.pop("eval_results")
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "CardInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes) -> "CardInfo":
        return dataclasses.replace(self, **changes)


# -- reading and writing the facts ------------------------------------------------------------------------------
def load_card_info(directory: str | os.PathLike) -> CardInfo:
    """The facts kept in a saved folder (``maw_card.json`` + ``eval_results.json``); an empty CardInfo for a folder
    saved without them (a plain checkpoint, or one saved before cards existed)."""
    directory = Path(directory)
    info = CardInfo()
    path = directory / CARD_INFO_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            info = CardInfo.from_dict(data.get("card", data))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            logger.warning("%s is unreadable (%s); the card says nothing of it", path, exc)
    info.eval_results = read_eval_results(directory)
    return info


def read_eval_results(directory: str | os.PathLike) -> list[dict]:
    path = Path(directory) / EVAL_RESULTS_NAME
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8")).get("results", [])
        return [dict(r) for r in rows if isinstance(r, Mapping) and "measure" in r and "value" in r]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("%s is unreadable (%s); the card shows no evaluation", path, exc)
        return []


def write_card_files(directory: str | os.PathLike, info: CardInfo, title: str | None = None) -> Path:
    """Write ``maw_card.json``, ``eval_results.json`` (when there are results) and ``README.md`` into ``directory``
    (a folder being saved; each file is written atomically). Returns the card's path."""
    from maw_reranker.utils.io import write_json

    directory = Path(directory)
    write_json(directory / CARD_INFO_NAME, {"maw_reranker_card_version": CARD_VERSION,
                                            "card": info.to_dict(with_eval=False)})
    if info.eval_results:
        write_json(directory / EVAL_RESULTS_NAME, {"results": list(info.eval_results)})
    return write_card(directory, info, title)


def write_card(directory: str | os.PathLike, info: CardInfo | None = None, title: str | None = None) -> Path:
    """(Re)write ``README.md`` of a saved folder from ``info`` (default: the facts the folder keeps)."""
    from maw_reranker.utils.io import atomic_write

    directory = Path(directory)
    info = load_card_info(directory) if info is None else info
    text = str(render_card(directory, info, title))
    with atomic_write(directory / CARD_NAME) as handle:
        handle.write(text)
    return directory / CARD_NAME


def record_eval_results(directory: str | os.PathLike, rows: Iterable[Mapping]) -> Path:
    """Add evaluation rows to a saved folder's ``eval_results.json`` and rewrite its card.

    A row replaces an earlier one of the same run folder and measure (a redo of the same run); the others are kept.
    The read-modify-write holds an exclusive lock on the folder, so concurrent evaluations of one model add their
    rows without losing any; the file and the card are each replaced atomically.
    """
    from maw_reranker.utils.io import write_json

    directory = Path(directory)
    new = [{k: row.get(k) for k in EVAL_KEYS} for row in rows]
    with _locked(directory):
        keep = {(r.get("run_dir"), r.get("measure")): r for r in read_eval_results(directory)}
        for row in new:
            keep.pop((row["run_dir"], row["measure"]), None)
        merged = list(keep.values()) + new
        write_json(directory / EVAL_RESULTS_NAME, {"results": merged})
        return write_card(directory)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder itself (no lock file left in the model folder)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the writes stay atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def base_card_metadata(path: str | os.PathLike | None) -> dict:
    """``license``, ``language``, ``datasets`` and ``base_model`` of a local model folder's own card (a hub snapshot
    keeps the model's README.md; a folder saved here keeps maw_card.json), so a fine-tuned card can name them."""
    if path is None or not Path(path).is_dir():
        return {}
    path = Path(path)
    out: dict = {}
    if (path / CARD_INFO_NAME).is_file():
        saved = load_card_info(path)
        out = {"license": saved.license, "language": saved.language, "datasets": saved.datasets,
               "base_model": saved.base_model}
    elif (path / CARD_NAME).is_file():
        try:
            from huggingface_hub import ModelCard

            data = ModelCard.load(path / CARD_NAME, ignore_metadata_errors=True).data.to_dict()
        except Exception as exc:  # noqa: BLE001 - someone else's card: unreadable metadata only loses the facts
            logger.debug("%s: card metadata unreadable (%s)", path / CARD_NAME, exc)
            return {}
        base = data.get("base_model")
        out = {"license": data.get("license"), "language": data.get("language"), "datasets": data.get("datasets"),
               "base_model": base[0] if isinstance(base, list) and len(base) == 1 else base}
    return {k: v for k, v in out.items() if v}


def is_hub_id(name: str | None) -> bool:
    """``org/name`` that is no local path: what the Hub's ``base_model`` metadata can link to."""
    if not name or not isinstance(name, str) or Path(os.path.expanduser(name)).exists():
        return False
    if name.startswith((".", "/", "~", "$")) or ":" in name or "\\" in name or name.count("/") != 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # noqa: BLE001 - HFValidationError: not a repo id
        return False
    return True


# -- rendering --------------------------------------------------------------------------------------------------
def card_data(info: CardInfo):
    """The card's metadata (``huggingface_hub.ModelCardData``): library, pipeline, tags, and what is known."""
    from huggingface_hub import ModelCardData

    language = info.language
    if isinstance(language, str):
        language = [language]
    tags = list(dict.fromkeys([*TAGS, *(info.tags or [])]))
    kwargs: dict[str, Any] = {"library_name": LIBRARY_NAME, "pipeline_tag": PIPELINE_TAG, "tags": tags}
    if info.base_model:
        kwargs["base_model"] = info.base_model
    if info.datasets:
        kwargs["datasets"] = list(info.datasets)
    if language:
        kwargs["language"] = list(language)
    if info.license:
        kwargs["license"] = info.license
    return ModelCardData(**kwargs)


def render_card(directory: str | os.PathLike, info: CardInfo, title: str | None = None):
    """The ``huggingface_hub.ModelCard`` of the folder: metadata from :func:`card_data`, a body from ``info`` and the
    folder's MAW settings (``maw_config.json``)."""
    from huggingface_hub import ModelCard

    directory = Path(directory)
    name = title or directory.name
    maw = _maw_settings(directory)
    sections = [f"# {name}", _intro(info, maw), "## What MAW is", MAW_SUMMARY, "## MAW settings", _maw_section(maw),
                "## Parameters", _parameters_section(info), "## Training", _training_section(info),
                "## Evaluation", _evaluation_section(info.eval_results), "## Usage", _usage_section(name, directory, maw)]
    body = "\n\n".join(s.strip() for s in sections if s and s.strip()) + "\n"
    return ModelCard(f"---\n{card_data(info).to_yaml()}\n---\n\n{body}")


def _maw_settings(directory: Path) -> Optional[dict]:
    path = directory / "maw_config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("use_maw", True) else None


def _layers(maw: Mapping) -> str:
    if maw.get("layers"):
        return "layers " + ", ".join(map(str, maw["layers"]))
    k = int(maw.get("inject_last_k", 1))
    return f"the last {k} layers" if k != 1 else "the last layer"


def _intro(info: CardInfo, maw: Optional[dict]) -> str:
    base = f"[`{info.base_model}`](https://huggingface.co/{info.base_model})" if info.base_model else None
    what = "A cross-encoder reranker: it reads a (query, document) pair and gives one relevance score (a logit)."
    where = (f" It has MAW attention in the self-attention of {_layers(maw)} of its encoder" if maw
             else " It has no MAW layers (a plain cross-encoder)")
    start = f", and was fine-tuned from {base}." if base and info.training else (f", built on {base}." if base else ".")
    return (what + where + start + " Saved by the `maw-reranker` package (`CrossEncoderWithMAW.save_pretrained`).")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _maw_section(maw: Optional[dict]) -> str:
    if not maw:
        return "None: this model has no MAW layers (`maw_config.json` is absent)."
    rows = [("layers", _layers(maw)), ("depth (`depth_dim`)", maw.get("depth_dim")),
            ("depth source", maw.get("depth_source")), ("gating", maw.get("gating_mode")),
            ("strength (alpha)", maw.get("maw_strength"))]
    if maw.get("depth_source") == "project":
        rows.append(("projection rank (`depth_rank`)", maw.get("depth_rank")))
    if maw.get("gating_mode") in ("stat", "argmax"):
        rows.append(("statistic sharpness", maw.get("stat_sharpness")))
    if maw.get("gating_mode") in ("learned", "gate", "router", "grpo"):
        rows.append(("weights per head", maw.get("per_head")))
    return _table(("setting", "value"), rows) + "\n\nAll of them are in `maw_config.json`."


def _parameters_section(info: CardInfo) -> str:
    p = info.parameters or {}
    if not p:
        return "Unknown."
    rows = [("total (saved model)", p.get("saved_total", p.get("total"))), ("MAW", p.get("saved_maw", p.get("maw")))]
    if "trainable" in p:
        rows.append(("trained (in the training run)", p["trainable"]))
    if p.get("lora"):
        rows.append(("LoRA adapters in training (merged into the saved weights)", p["lora"]))
    return _table(("parameters", "count"), [(k, f"{v:,}" if isinstance(v, int) else v) for k, v in rows
                                            if v is not None])


def _training_section(info: CardInfo) -> str:
    if not info.training:
        return ("No record of training: this folder was saved outside `maw-rerank train` (for example by "
                "`save_pretrained` in Python), so this card says nothing about how its weights were trained.")
    opts = info.training
    run = info.training_run or {}
    lora = opts.get("trainable") == "lora" or opts.get("top_lora")
    rows = []
    for key in RECIPE_KEYS:
        value = opts.get(key)
        if value is None or value == "" or (key in _LORA_KEYS and not lora):
            continue
        if key == "top_layers" and opts.get("trainable") != "top":
            continue
        if key == "epochs" and opts.get("max_steps") is not None:
            continue
        if key in ("warmup_ratio",) and opts.get("warmup_steps"):
            continue
        rows.append((f"`{key}`", value))
    if opts.get("maw") not in (None, "auto"):
        rows.append(("`maw`", opts.get("maw")))
    parts = [f"Trained with `{run['command']}`." if run.get("command") else
             "Trained by `maw_reranker.train` (the trainer of `maw-rerank train`) from Python: no command line to show."]
    facts = [("optimizer steps", run.get("steps")), ("training time (s)", run.get("train_seconds")),
             ("saved model", run.get("saved")), ("training run folder", run.get("output_dir"))]
    if run.get("best_metric") is not None:
        facts.append((f"best dev {run.get('dev_measure', '')} (selects `best/`)".replace("  ", " "),
                      f"{run['best_metric']:.4f} at step {run.get('best_step')}"
                      + (f" on {run['dev_set']}" if run.get("dev_set") else "")))
    facts = [(k, v) for k, v in facts if v is not None]
    if facts:
        parts.append(_table(("run", ""), facts))
    parts.append("Recipe (the training options; all of them are in the folded block below):\n\n"
                 + _table(("option", "value"), rows))
    if info.training_data:
        data_rows = [(f"`{k}`", v) for k, v in info.training_data.items() if v not in (None, "", [], {})]
        parts.append("Training data:\n\n" + _table(("", ""), data_rows))
    full = json.dumps(opts, indent=2, sort_keys=True, default=str)
    parts.append(f"<details><summary>All training options</summary>\n\n```json\n{full}\n```\n\n</details>")
    return "\n\n".join(parts)


def _evaluation_section(rows: list[dict]) -> str:
    if not rows:
        return ("Not evaluated since it was saved: `maw-rerank eval` (or `suite`, `study`) adds its results here "
                "when it evaluates this folder.")
    ordered = sorted(rows, key=lambda r: (str(r.get("dataset")), str(r.get("split")), str(r.get("run_dir")),
                                          str(r.get("measure"))))
    table = _table(("dataset", "measure", "value", "queries", "candidates", "reranked depth", "command"),
                   [(_dataset_label(r), r.get("measure"), _value(r.get("value")), r.get("queries"),
                     r.get("candidates"), r.get("depth") or "all",
                     f"`{r['command']}`" if r.get("command") else "(from Python)")
                    for r in ordered])
    folders = sorted({str(r.get("run_dir")) for r in rows if r.get("run_dir")})
    note = ("Measured by `maw-rerank eval` on the candidates named in each run folder (`config.json` there holds "
            "every option): " + ", ".join(f"`{f}`" for f in folders) + ".") if folders else ""
    return table + ("\n\n" + note if note else "")


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _cell(value)


def _dataset_label(row: Mapping) -> str:
    label = str(row.get("dataset") or "")
    return f"{label} ({row['split']})" if row.get("split") else label


def _usage_section(name: str, directory: Path, maw: Optional[dict]) -> str:
    remote = False
    load_as = name if is_hub_id(name) else f"path/to/{name}"
    with contextlib.suppress(OSError, ValueError):
        remote = bool(json.loads((directory / "config.json").read_text(encoding="utf-8")).get("auto_map"))
    code = ("```python\nfrom maw_reranker import CrossEncoderWithMAW  # pip install maw-reranker\n\n"
            f"model = CrossEncoderWithMAW.from_pretrained(\"{load_as}\")  # MAW settings and parameters restored\n"
            "scores = model.predict([(\"what is maw\", \"MAW attention mixes several attention maps per head\")])\n"
            "```")
    if not maw:
        plain = "With `transformers` alone, `AutoModelForSequenceClassification` loads it as it is."
    elif remote:
        plain = ("With `transformers` alone, `AutoModelForSequenceClassification.from_pretrained(..., "
                 "trust_remote_code=True)` loads it with its MAW layers (the modeling code is `modeling_maw.py`, beside the weights).")
    else:
        plain = ("With `transformers` alone, `AutoModelForSequenceClassification` loads the backbone and head "
                 "without the MAW layers, which then score differently: use `maw-reranker` to get the model as "
                 "trained.")
    return code + "\n\n" + plain


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
