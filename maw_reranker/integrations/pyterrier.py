"""A MAW cross-encoder as a PyTerrier reranker: ``bm25 >> MAWReranker("namespace/name")``.

:class:`MAWReranker` is a ``pt.Transformer`` over result frames: it takes ``qid, query, docno, text`` (plus any
other columns, kept), scores every (query, text) pair with the one scoring loop of this package
(``evaluate/rerank.score_pairs``: length-sorted batches, optional autocast), and returns the frame with ``score``
replaced and ``rank`` recomputed by ``pt.model.add_ranks``, as PyTerrier's own rerankers do. With ``depth_log`` the
MAW layers' depth weights and selected depth of every pair are added as columns
``maw_depth_weights_<layer>`` (a float array per row) and ``maw_selected_depth_<layer>``.

No Java is started: the transformer and ``pt.Experiment`` over frames need only PyTerrier's Python side.
Install with ``pip install 'maw-reranker[pyterrier]'``.
"""

from __future__ import annotations

from typing import Optional

try:
    import pandas as pd
    import pyterrier as pt
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(f"maw_reranker.integrations.pyterrier needs PyTerrier ({exc}); install it with "
                      "pip install 'maw-reranker[pyterrier]'") from exc

from maw_reranker.cross_encoder.model import PRECISIONS, CrossEncoderWithMAW
from maw_reranker.evaluate.rerank import score_pairs
from maw_reranker.maw.patcher import maw_layers

__all__ = ["MAWReranker"]


class MAWReranker(pt.Transformer):
    """Rerank a PyTerrier result frame with a cross-encoder (MAW-patched or not).

    ``model``: a ``CrossEncoderWithMAW``, or what ``CrossEncoderWithMAW.from_pretrained`` takes (a saved folder, a
    hub id), loaded with ``maw``, ``max_length`` and ``device``. ``text_field``: the column holding the document
    text. ``batch_size``: pairs per forward pass. ``precision``: ``fp32``, or autocast to ``bf16``/``fp16``.
    ``progress``: a progress bar per call. ``depth_log``: add the MAW depth columns (see the module docstring).
    """

    def __init__(self, model, *, batch_size: int = 32, precision: str = "fp32", progress: bool = False,
                 depth_log: bool = False, text_field: str = "text", maw="auto", max_length: Optional[int] = None,
                 device: Optional[str] = None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(model, CrossEncoderWithMAW):
            model = CrossEncoderWithMAW.from_pretrained(model, maw=maw, max_length=max_length, device=device)
        self.model = model
        self.batch_size = int(batch_size)
        self.precision = precision
        self.progress = bool(progress)
        self.depth_log = bool(depth_log)
        self.text_field = text_field

    def __repr__(self) -> str:
        maw = self.model.maw_config
        what = "no MAW" if maw is None else f"MAW {maw.gating_mode} D={maw.depth_dim} alpha={maw.maw_strength:g}"
        return f"MAWReranker({what}, batch_size={self.batch_size}, precision={self.precision!r})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pt.validate.result_frame(inp, extra_columns=["query", self.text_field])
        out = inp.copy()
        if out.empty:
            out["score"] = pd.Series(index=out.index, dtype="float64")
            return pt.model.add_ranks(out)
        missing = out[out["query"].isna() | out[self.text_field].isna()]
        if len(missing):
            first = missing.iloc[0]
            raise ValueError(f"{len(missing)} rows have no query or no {self.text_field!r} (e.g. qid {first['qid']}, "
                             f"docno {first['docno']}): add the texts first (e.g. pt.text.get_text)")
        pairs = list(zip(out["query"].astype(str), out[self.text_field].astype(str)))
        want_depth = self.depth_log and bool(maw_layers(self.model.model))
        result = score_pairs(self.model, pairs, batch_size=self.batch_size, precision=self.precision,
                             return_depth=want_depth, show_progress=self.progress, desc="MAW rerank")
        scores, depth = result if want_depth else (result, {})
        out["score"] = scores.astype("float64")
        for layer, info in sorted(depth.items()):
            out[f"maw_depth_weights_{layer}"] = list(info["weights"])
            out[f"maw_selected_depth_{layer}"] = info["selected"]
        return pt.model.add_ranks(out)
