"""`MAWConfig`: the public contract of a MAW variant (docs/MAW.md section 8)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, get_args

from maw_reranker.utils.io import write_json

GatingMode = Literal["uniform", "random", "stat", "argmax", "learned", "gate", "router", "grpo"]
DepthSource = Literal["split", "project"]
GATING_MODES = get_args(GatingMode)
STAT_MODES = ("stat", "argmax", "router", "grpo")  # modes whose weights need per-depth attention statistics
DEPTH_SOURCES = get_args(DepthSource)
CONFIG_NAME = "maw_config.json"
# Fields that decide which MAW parameters exist and their shapes (and the layers, compared resolved); the others
# are settings applied to the same parameters.
MLP_MODES = ("gate", "router", "grpo")  # gating modes with an MLP of width gate_hidden
STRUCTURE_FIELDS = ("use_maw", "depth_dim", "depth_source", "depth_rank", "gating_mode", "per_head", "gate_hidden")


@dataclass
class MAWConfig:
    """Settings of a Multi-Attention-Weight variant. ``MAWConfig()`` is the study's default variant;
    ``MAWConfig(use_maw=False)`` is the unpatched baseline (patching it changes nothing)."""

    use_maw: bool = True
    depth_dim: int = 8
    depth_source: DepthSource = "split"
    depth_rank: int = 8
    gating_mode: GatingMode = "stat"
    maw_strength: float = 0.15
    inject_last_k: int = 1
    layers: Optional[list[int]] = None
    maw_random_seed: int = 0
    stat_sharpness: float = 2.5
    router_tau: float = 1.0
    # Extensions beyond MAW.md section 8 (documented in docs/maw.md).
    per_head: bool = False  # learned modes only: weights [B, H, D] instead of [B, D]
    gate_hidden: int = 64  # hidden width of the `gate` MLP and the router/policy MLP
    stat_chunk: int = 0  # examples per chunk when computing statistics; 0 = automatic (bounded peak memory)

    def __post_init__(self) -> None:
        if not isinstance(self.use_maw, bool):
            raise ValueError(f"MAWConfig.use_maw must be True or False, got {self.use_maw!r}")
        if self.gating_mode not in GATING_MODES:
            raise ValueError(f"MAWConfig.gating_mode={self.gating_mode!r}; allowed: {', '.join(GATING_MODES)}")
        if self.depth_source not in DEPTH_SOURCES:
            raise ValueError(f"MAWConfig.depth_source={self.depth_source!r}; allowed: {', '.join(DEPTH_SOURCES)}")
        if int(self.depth_dim) < 1:
            raise ValueError(f"MAWConfig.depth_dim must be >= 1, got {self.depth_dim}")
        if self.depth_rank < 1:
            raise ValueError(f"MAWConfig.depth_rank must be >= 1, got {self.depth_rank}")
        if not 0.0 <= float(self.maw_strength) <= 1.0:
            raise ValueError(f"MAWConfig.maw_strength must be in [0, 1], got {self.maw_strength}")
        if self.layers is None and self.inject_last_k < 1:
            raise ValueError(f"MAWConfig.inject_last_k must be >= 1 (or give `layers`), got {self.inject_last_k}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
            if not self.layers:
                raise ValueError("MAWConfig.layers must name at least one layer index")
        if self.router_tau <= 0:
            raise ValueError(f"MAWConfig.router_tau must be > 0, got {self.router_tau}")
        if self.per_head and self.gating_mode not in ("learned", "gate"):
            raise ValueError("MAWConfig.per_head is supported for gating_mode 'learned' and 'gate' only")

    @property
    def needs_stats(self) -> bool:
        return self.gating_mode in STAT_MODES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MAWConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MAWConfig field(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        write_json(path, {"maw_reranker_config_version": 1, **self.to_dict()})
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "MAWConfig":
        path = Path(directory) / CONFIG_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object of MAWConfig fields")
            data.pop("maw_reranker_config_version", None)
            return cls.from_dict(data)
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid MAW config ({exc})") from None

    def structure_diff(self, other: "MAWConfig", num_layers: int) -> list[str]:
        """Fields that make ``other`` a different MAW structure (other parameters, shapes or layers) for a model of
        ``num_layers`` layers; the fields outside STRUCTURE_FIELDS (strength, seeds, sharpness, temperature, chunking)
        can change on a trained model without touching its parameters."""
        diff = [name for name in STRUCTURE_FIELDS if getattr(self, name) != getattr(other, name)]
        if self.depth_source == other.depth_source == "split" and "depth_rank" in diff:
            diff.remove("depth_rank")  # split depths have no projection of that rank
        if self.gating_mode == other.gating_mode and self.gating_mode not in MLP_MODES and "gate_hidden" in diff:
            diff.remove("gate_hidden")  # only the gate / router MLP has that width
        if resolve_layers(self, num_layers) != resolve_layers(other, num_layers):
            diff.append("layers")
        return diff

    def replace(self, **changes) -> "MAWConfig":
        return dataclasses.replace(self, **changes)


def resolve_layers(config: MAWConfig, num_layers: int) -> list[int]:
    """The encoder layer indices to patch: explicit ``layers`` (negative indices allowed) or the last k."""
    if config.layers is not None:
        out = []
        for idx in config.layers:
            real = idx + num_layers if idx < 0 else idx
            if not 0 <= real < num_layers:
                raise ValueError(f"MAWConfig.layers: index {idx} out of range for a model with {num_layers} layers")
            out.append(real)
        return sorted(set(out))
    if config.inject_last_k > num_layers:
        raise ValueError(f"MAWConfig.inject_last_k={config.inject_last_k} but the model has only {num_layers} layers")
    return list(range(num_layers - config.inject_last_k, num_layers))


__all__ = ["MAWConfig", "GATING_MODES", "STAT_MODES", "STRUCTURE_FIELDS", "DEPTH_SOURCES", "resolve_layers"]
