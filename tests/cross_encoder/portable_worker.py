"""Run by test_portable.py as ``python -I portable_worker.py MANIFEST OUT`` from a folder outside the repository:
loads saved MAW folders the way a user without maw-reranker would, and writes what it got to OUT (JSON).

``maw_reranker`` is made unimportable first (a meta-path finder refuses it, before the editable install's finder
could find it), so the only MAW code that can run is the folder's ``modeling_maw.py``. Each case is caught on its own,
so one failing case is reported by its own test.
"""

import importlib.abc
import json
import sys
import traceback


class _RefuseMAWReranker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "maw_reranker":
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the portable-checkpoint test)",
                                      name=name)
        return None


sys.meta_path.insert(0, _RefuseMAWReranker())


def _logits(model, tokenizer, pairs, max_length, grad):
    import torch

    batch = tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=max_length,
                      padding=True, return_tensors="pt")
    with torch.set_grad_enabled(grad):
        return model(**batch).logits[:, 0].detach().float().tolist()


def _maw_layers(model):
    return sorted(name for name, module in model.named_modules()
                  if hasattr(module, "base_layer") and hasattr(module, "maw_config"))


def run_case(case, CrossEncoder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder, pairs, max_length = case["dir"], [tuple(p) for p in case["pairs"]], case["max_length"]
    entry = {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
        entry["auto_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
        entry["maw_layers"] = _maw_layers(model)
        entry["auto"] = _logits(model, tokenizer, pairs, max_length, grad=False)
        # With autograd on (no torch.no_grad around the call), MAW takes its autograd path: same scores.
        entry["auto_grad"] = _logits(model, tokenizer, pairs, max_length, grad=True)
        if case.get("resave"):
            model.save_pretrained(case["resave"])
            tokenizer.save_pretrained(case["resave"])
            again = AutoModelForSequenceClassification.from_pretrained(case["resave"], trust_remote_code=True)
            entry["resaved"] = _logits(again, tokenizer, pairs, max_length, grad=False)
    except Exception:
        entry["auto_error"] = traceback.format_exc()
    if CrossEncoder is not None:
        try:
            ce = CrossEncoder(folder, trust_remote_code=True, device="cpu", max_length=max_length)
            entry["st_maw_layers"] = _maw_layers(ce.model)
            entry["st"] = [float(x) for x in ce.predict(pairs, batch_size=case["batch_size"],
                                                        activation_fn=torch.nn.Identity(), show_progress_bar=False)]
        except Exception:
            entry["st_error"] = traceback.format_exc()
    return entry


def main(manifest, out):
    try:
        import maw_reranker  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:
        CrossEncoder = None
    cases = json.load(open(manifest, encoding="utf-8"))
    results = {case["id"]: run_case(case, CrossEncoder) for case in cases}
    report = {"maw_reranker_blocked": blocked, "sentence_transformers": CrossEncoder is not None,
              "maw_modules_loaded": sorted(m for m in sys.modules if m.split(".")[0] == "maw_reranker"),
              "cases": results}
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
