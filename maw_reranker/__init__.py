"""maw-reranker: Multi-Attention-Weight attention for Hugging Face cross-encoder rerankers."""

__version__ = "0.1.0"

_LAZY = {
    "MAWConfig": "maw_reranker.maw.config",
    "DepthwiseMAWSelfAttention": "maw_reranker.maw.layer",
    "patch_model": "maw_reranker.maw.patcher",
    "unpatch_model": "maw_reranker.maw.patcher",
    "maw_layers": "maw_reranker.maw.patcher",
    "CrossEncoderWithMAW": "maw_reranker.cross_encoder.model",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):  # lazy so that `import maw_reranker` does not import torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
