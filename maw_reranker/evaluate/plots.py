"""PNG plots (matplotlib, Agg backend): MAW depth usage per layer, and per-query differences against a baseline."""

from __future__ import annotations

import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display, safe in workers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from maw_reranker.evaluate.significance import align  # noqa: E402
from maw_reranker.utils.io import atomic_write  # noqa: E402


def _save(fig, out_png: str | Path) -> Path:
    # Render to memory first so a failed render never leaves a partial PNG, then write atomically.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    out_png = Path(out_png)
    with atomic_write(out_png, mode="wb") as handle:
        handle.write(buffer.getvalue())
    return out_png


def read_depth_log(path: str | Path) -> list[dict]:
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    return rows


def _collect_depths(rows: Iterable[Mapping]) -> dict[str, dict]:
    """layer -> {'selected': [int], 'weights': [[float]*D]}; layers sorted numerically where possible."""
    layers: dict[str, dict] = defaultdict(lambda: {"selected": [], "weights": []})
    for i, row in enumerate(rows):
        if "layers" not in row:
            raise ValueError(f"depth log row {i} has no 'layers' field")
        for layer, info in row["layers"].items():
            entry = layers[str(layer)]
            if info.get("selected") is not None:
                entry["selected"].append(int(info["selected"]))
            if info.get("weights") is not None:
                entry["weights"].append([float(w) for w in info["weights"]])
    if not layers:
        raise ValueError("depth log is empty: nothing to plot")

    def key(name: str):
        return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)

    return {name: layers[name] for name in sorted(layers, key=key)}


def plot_depth_usage(rows_or_path: str | Path | Iterable[Mapping], out_png: str | Path) -> Path:
    """Per MAW layer: histogram of the selected depth (left) and mean depth weight with std (right)."""
    rows = read_depth_log(rows_or_path) if isinstance(rows_or_path, (str, Path)) else list(rows_or_path)
    layers = _collect_depths(rows)
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, 2.6 * len(layers) + 0.6), squeeze=False)
    for (layer, data), (ax_sel, ax_w) in zip(layers.items(), axes):
        n_depths = max([len(w) for w in data["weights"]] + [max(data["selected"], default=-1) + 1, 1])
        counts = np.bincount(np.asarray(data["selected"], dtype=int), minlength=n_depths) if data["selected"] else np.zeros(n_depths)
        ax_sel.bar(np.arange(len(counts)), counts, color="tab:blue")
        ax_sel.set_title(f"layer {layer}: selected depth (n={len(data['selected'])})", fontsize=10)
        ax_sel.set_xlabel("depth index")
        ax_sel.set_ylabel("count")
        ax_sel.set_xticks(np.arange(len(counts)))
        if data["weights"]:
            widths = {len(w) for w in data["weights"]}
            if len(widths) != 1:
                raise ValueError(f"layer {layer}: depth weight vectors have different lengths {sorted(widths)}")
            weights = np.asarray(data["weights"])
            ax_w.bar(np.arange(weights.shape[1]), weights.mean(axis=0), yerr=weights.std(axis=0),
                     color="tab:orange", capsize=3)
            ax_w.set_xticks(np.arange(weights.shape[1]))
        else:
            ax_w.text(0.5, 0.5, "no weights logged", ha="center", va="center", transform=ax_w.transAxes)
        ax_w.set_title(f"layer {layer}: mean depth weight (± std, n={len(data['weights'])})", fontsize=10)
        ax_w.set_xlabel("depth index")
        ax_w.set_ylabel("weight")
    fig.suptitle(f"MAW depth usage over {len(rows)} query-document pairs")
    fig.tight_layout()
    return _save(fig, out_png)


def plot_query_deltas(
    per_query_a: Mapping[str, float],
    per_query_b: Mapping[str, float],
    measure: str,
    out_png: str | Path,
    label_a: str = "baseline",
    label_b: str = "variant",
) -> Path:
    """Sorted per-query differences (b - a) as bars; green = b better, red = b worse. Ids must match."""
    qids, a, b = align(per_query_a, per_query_b)
    if not qids:
        raise ValueError("no queries to plot")
    diffs = np.sort(b - a)[::-1]
    colors = np.where(diffs > 0, "tab:green", np.where(diffs < 0, "tab:red", "tab:gray"))
    fig, ax = plt.subplots(figsize=(min(14.0, 6 + len(diffs) / 100), 4))
    ax.bar(np.arange(len(diffs)), diffs, width=1.0 if len(diffs) > 50 else 0.8, color=colors)
    ax.axhline(0.0, color="black", linewidth=0.8)
    mean = float(diffs.mean())
    ax.axhline(mean, color="tab:blue", linestyle="--", linewidth=1, label=f"mean Δ = {mean:+.4f}")
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    ax.set_title(f"{measure}: {label_b} − {label_a} per query ({wins} better, {losses} worse, "
                 f"{len(diffs) - wins - losses} tied)")
    ax.set_xlabel("queries (sorted by difference)")
    ax.set_ylabel(f"Δ {measure}")
    ax.set_xlim(-1, len(diffs))
    ax.legend(loc="upper right")
    fig.tight_layout()
    return _save(fig, out_png)
