"""Pack what `gpu_check.py` needs onto a machine with no network: the real checkpoint, the DL19 candidates and
the test runner, small enough to travel with the working tree (docs/maw.md, "GPU check").

  pack    (here)   python benchmarks/gpu_bundle.py pack [.gpu] [--models DIR] [--data DIR]
  unpack  (there)  python benchmarks/gpu_bundle.py unpack [.gpu] /tmp/maw-models

The bundle folder (`.gpu/`, git-ignored) holds:
  model/ms-marco-MiniLM-L-12-v2/  the checkpoint of cross-encoder/ms-marco-MiniLM-L-12-v2 as our offline set-up has it
                                  (benchmarks/offline_setup.py): by default its snapshot in the Hugging Face cache,
                                  which ../shared/tools/seed-hf-cache.sh fills from ../shared/tools/get-models.sh's
                                  folder (or --models: that folder, holding ms-marco-MiniLM-L-12-v2/, or the
                                  checkpoint folder itself). Stored losslessly in about a quarter of its size: it was
                                  rebuilt from INT8 weights, so each large tensor has at most 256 distinct values,
                                  kept as uint8 codes plus a per-tensor table; `unpack` rebuilds the float32
                                  tensors of `model.safetensors` bit for bit (checked on `pack`);
  data/trec-dl-2019-passage/      the BM25 top-100 candidate texts of DL19 (from $MAW_DATA, default ../shared/data);
  wheels/                         pure-Python wheels the GPU machine's Python lacks (pytest and its needs).

The machine: `python -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl`, then
`PYTHONPATH=/tmp/site python benchmarks/gpu_check.py --model /tmp/maw-models/ms-marco-MiniLM-L-12-v2
--data .gpu/data/trec-dl-2019-passage`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from offline_setup import CROSS_ENCODER, data_root, model_folder  # noqa: E402

MODEL = "ms-marco-MiniLM-L-12-v2"
DL19 = Path("trec-dl-2019-passage/rank_llm/BM25/retrieve_results_dl19.json")
WHEELS = ["pytest==8.3.5", "pluggy==1.5.0", "iniconfig==2.0.0"]
CODES, TABLE, RAW = "codes::", "table::", "raw::"


BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float64: torch.int64}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so that -0.0 and +0.0, or two NaNs, stay distinct)."""
    return tensor.view(BITS[tensor.dtype]) if tensor.dtype in BITS else tensor


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a)


def encode(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors with at most 256 distinct bit patterns as uint8 codes and a table of those patterns;
    the rest as they are."""
    out = {}
    for name, tensor in state.items():
        if tensor.dtype in BITS:
            table, codes = torch.unique(bits(tensor), return_inverse=True)
            if table.numel() <= 256:
                out[CODES + name], out[TABLE + name] = codes.to(torch.uint8), table.view(tensor.dtype)
                continue
        out[RAW + name] = tensor
    return out


def decode(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in packed.items():
        if key.startswith(CODES):
            name = key[len(CODES):]
            table = packed[TABLE + name]
            state[name] = bits(table)[tensor.long()].view(table.dtype)
        elif key.startswith(RAW):
            state[key[len(RAW):]] = tensor
    return state


def checkpoint(models: Path | None) -> Path:
    """The checkpoint folder to pack: in ``models`` (get-models.sh's folder, holding MODEL/, or the checkpoint folder
    itself), or by default the snapshot of CROSS_ENCODER in the Hugging Face cache (never downloaded)."""
    if models is None:
        folder = model_folder(CROSS_ENCODER)
        if folder is not None and (folder / "model.safetensors").is_file():
            return folder
        sys.exit(f"{CROSS_ENCODER} is not in the Hugging Face cache: run bash ../shared/tools/seed-hf-cache.sh "
                 "(it runs ../shared/tools/get-models.sh) or pass --models")
    for folder in (models / MODEL, models):
        if (folder / "model.safetensors").is_file():
            return folder
    sys.exit(f"{models / MODEL}/model.safetensors not found: run ../shared/tools/get-models.sh first "
             "(or leave --models out to pack the Hugging Face cache's copy)")


def pack(bundle: Path, models: Path | None, data: Path) -> None:
    source = checkpoint(models)
    if not (data / DL19).is_file():
        sys.exit(f"{data / DL19} not found (set MAW_DATA or pass --data)")
    target = bundle / "model" / MODEL
    shutil.rmtree(bundle, ignore_errors=True)
    target.mkdir(parents=True)
    state = load_file(str(source / "model.safetensors"))
    packed = encode(state)
    rebuilt = decode(packed)
    if not same_bits(rebuilt, state):
        sys.exit("the packed checkpoint does not rebuild exactly; not writing a bundle")
    save_file(packed, str(target / "packed.safetensors"))
    for item in source.iterdir():  # a cache snapshot's files are links into its blobs: copied as files
        if item.name == "model.safetensors":
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)
    (bundle / "data" / DL19).parent.mkdir(parents=True)
    shutil.copy2(data / DL19, bundle / "data" / DL19)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(bundle / "wheels"),
                    *WHEELS], check=True)
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    print(f"{bundle}: {size / 2**20:.1f} MiB (the working tree that travels may hold 64 MiB in all)")


def unpack(bundle: Path, models: Path) -> None:
    source, target = bundle / "model" / MODEL, models / MODEL
    target.mkdir(parents=True, exist_ok=True)
    save_file(decode(load_file(str(source / "packed.safetensors"))), str(target / "model.safetensors"))
    for item in source.iterdir():
        if item.name != "packed.safetensors":
            shutil.copy2(item, target / item.name)
    print(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the bundle (here)")
    p.add_argument("bundle", nargs="?", default=".gpu", type=Path)
    p.add_argument("--models", type=Path, default=None,
                   help=f"get-models.sh's folder (holding {MODEL}/) or the checkpoint folder (default: the snapshot "
                        f"of {CROSS_ENCODER} in the Hugging Face cache)")
    p.add_argument("--data", type=Path, default=data_root(), help="the local data copies (default: $MAW_DATA)")
    u = sub.add_parser("unpack", help="rebuild the checkpoint (on the GPU machine)")
    u.add_argument("bundle", nargs="?", default=".gpu", type=Path)
    u.add_argument("models", type=Path)
    args = ap.parse_args()
    if args.command == "pack":
        pack(args.bundle, args.models, args.data)
    else:
        unpack(args.bundle, args.models)


if __name__ == "__main__":
    main()
