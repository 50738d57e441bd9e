"""The GPU run in one device call: pack here what `gpu_check.py` and the GPU study (`maw-gpu`) need on a machine with
no network, small enough to travel with the working tree, then run both there under one time guard
(docs/maw.md, "GPU check"; docs/study.md, "GPU study").

  pack    (here)   python benchmarks/gpu_bundle.py pack [.gpu] [--models DIR] [--data DIR] [--study maw-gpu]
  run     (there)  python benchmarks/gpu_bundle.py run [.gpu] --out $OUT [--device cuda|cpu] [--quick]
                                                   [--deadline-s 530] [--check-s 120] [--reserve-s 150]
  unpack  (there)  python benchmarks/gpu_bundle.py unpack [.gpu] /tmp/maw-models   (the checkpoint alone)

The bundle folder (`.gpu/`, git-ignored) holds:
  model/ms-marco-MiniLM-L-12-v2/  the checkpoint of cross-encoder/ms-marco-MiniLM-L-12-v2 as our offline set-up has it
                                  (benchmarks/offline_setup.py): by default its snapshot in the Hugging Face cache,
                                  which ../shared/tools/seed-hf-cache.sh fills from ../shared/tools/get-models.sh's
                                  folder (or --models: that folder, holding ms-marco-MiniLM-L-12-v2/, or the
                                  checkpoint folder itself). Stored losslessly in about a quarter of its size: it was
                                  rebuilt from INT8 weights, so each large tensor has at most 256 distinct values,
                                  kept as uint8 codes plus a per-tensor table; `unpack` rebuilds the float32
                                  tensors of `model.safetensors` bit for bit (checked on `pack`);
  data/                           gzip copies of the study's local data (every `${MAW_DATA}/...` path its config
                                  names, from $MAW_DATA, default ../shared/data; DL19 is gpu_check's data too),
                                  listed with their sizes and SHA-256 in manifest.json (checked on `run`);
  wheels/                         the wheels of packages the GPU image lacks (KINDS.md's list): the study's
                                  evaluation and BM25 pools (ir_datasets, ir_measures, bm25s and their compiled
                                  needs), for its Python (3.12, manylinux x86-64);
  manifest.json                   what was packed, from where.

`run` installs the wheels whose modules are missing (into a work folder, never into the machine's Python), places
the checkpoint in a Hugging Face cache of its own under its hub id (so the config's hub id loads with
HF_HUB_OFFLINE=1), unpacks the data, then runs `gpu_check.py` (at most --check-s seconds; 0 skips it) and the study
(`maw-rerank study --config maw-gpu`, `time_budget_s` = what is left of --deadline-s less --reserve-s for its
evaluation and report (and its start-up): trainings past it are not started, one under way stops; the report says partial). It writes at
most 8 files to --out (what a device call brings back): run.log, gpu_check.md, study_report.md, study_results.tar.gz
(summaries, per-query results, train summaries, model cards), maw_parameters.safetensors (the trained MAW parameters
of every complete MAW run, keyed `<protocol>/<variant>/seed_<n>/<parameter>`) and run.json (timings, what completed).
`--device cpu --quick` runs the same command on a CPU with the study's quick settings.
"""

from __future__ import annotations

import time

START = time.monotonic()  # before the heavy imports: --deadline-s counts from the start of the process

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from offline_setup import CROSS_ENCODER, data_root, model_folder  # noqa: E402

REPO = HERE.parent
MODEL = "ms-marco-MiniLM-L-12-v2"
DL19 = Path("trec-dl-2019-passage/rank_llm/BM25/retrieve_results_dl19.json")
STUDY = "maw-gpu"
# distributions the GPU image lacks (../.library/device/KINDS.md), the module each provides; packed at the versions
# installed here, for the GPU machine's Python
WHEELS = {"ir_datasets": "ir_datasets", "lz4": "lz4", "ir_measures": "ir_measures",
          "pytrec_eval-terrier": "pytrec_eval", "bm25s": "bm25s", "PyStemmer": "Stemmer"}
TARGET_PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
REVISION = "0" * 40  # the snapshot name of the checkpoint in the run's own Hugging Face cache
OUT_FILES = ("run.log", "gpu_check.md", "study_report.md", "study_results.tar.gz", "maw_parameters.safetensors",
             "run.json")
OUT_LIMIT = 16 * 2**20  # a device call brings back files of at most 16 MiB
STARTUP_S = 30.0  # the study's imports, planning and test sets before its clock starts
COLLECT_S = 45.0  # the study's hard stop comes this long before the deadline: the kill, then collect
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


def study_data(study: str) -> list[Path]:
    """The local data paths (relative to $MAW_DATA) the study's config names as ``${MAW_DATA}/...``, DL19 first."""
    config = REPO / "benchmarks" / "configs" / "studies" / f"{study}.yaml"
    if not config.is_file():
        sys.exit(f"{config}: no such study config (option --study)")
    import yaml

    found: list[Path] = [DL19]

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node.startswith("${MAW_DATA}/"):
            path = Path(node[len("${MAW_DATA}/"):])
            if path not in found:
                found.append(path)

    walk(yaml.safe_load(config.read_text()))
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack_data(bundle: Path, data: Path, study: str) -> list[dict]:
    """gzip copies of the study's data files under bundle/data/; their manifest entries."""
    files: list[Path] = []
    for rel in study_data(study):
        source = data / rel
        if source.is_dir():
            files += sorted(p.relative_to(data) for p in source.rglob("*") if p.is_file())
        elif source.is_file():
            files.append(rel)
        else:
            sys.exit(f"{source} not found: the study config {study}.yaml names it (set MAW_DATA or pass --data)")
    entries = []
    for rel in files:
        target = bundle / "data" / f"{rel}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(data / rel, "rb") as src, gzip.open(target, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        entries.append({"path": str(rel), "bytes": (data / rel).stat().st_size, "sha256": sha256(data / rel)})
    return entries


def download_wheels(folder: Path) -> list[str]:
    """The wheels of WHEELS at the versions installed here, for the GPU machine's Python."""
    specs = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", TARGET_PYTHON, "--implementation", "cp", *platforms, "-d", str(folder),
                    *specs], check=True)
    return specs


def pack(bundle: Path, models: Path | None, data: Path, study: str = STUDY) -> None:
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
    entries = pack_data(bundle, data, study)
    specs = download_wheels(bundle / "wheels")
    manifest = {"model": CROSS_ENCODER, "model_source": str(source), "study": study, "data": entries,
                "wheels": specs, "python": TARGET_PYTHON, "packed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    print(f"{bundle}: {size / 2**20:.1f} MiB (the working tree that travels may hold 64 MiB in all)")


def unpack(bundle: Path, models: Path) -> Path:
    """The checkpoint, rebuilt bit for bit, as ``models/MODEL``."""
    source, target = bundle / "model" / MODEL, models / MODEL
    target.mkdir(parents=True, exist_ok=True)
    save_file(decode(load_file(str(source / "packed.safetensors"))), str(target / "model.safetensors"))
    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        elif item.name != "packed.safetensors":
            shutil.copy2(item, target / item.name)
    return target


def seed_cache(bundle: Path, hf_home: Path) -> Path:
    """The checkpoint as the main revision of CROSS_ENCODER in a Hugging Face cache at ``hf_home``."""
    repo = hf_home / "hub" / f"models--{CROSS_ENCODER.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    final = repo / "snapshots" / REVISION
    shutil.rmtree(final, ignore_errors=True)  # a reused --work folder
    return unpack(bundle, repo / "snapshots").rename(final)


def unpack_data(bundle: Path, data: Path, manifest: dict) -> None:
    for entry in manifest["data"]:
        target = data / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(bundle / "data" / f"{entry['path']}.gz", "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if sha256(target) != entry["sha256"]:
            sys.exit(f"{target}: its SHA-256 is not the packed file's (a damaged bundle: pack it again)")


def install_wheels(bundle: Path, site: Path, log) -> list[str]:
    """Install, into ``site``, the bundle's wheels whose module this Python lacks; their file names."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    by_name = {name.lower().replace("-", "_"): module for name, module in WHEELS.items()}
    missing = [w for w in wheels if importlib.util.find_spec(by_name.get(w.name.split("-")[0].lower(), "?")) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(site), *map(str, missing)], check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    return [w.name for w in missing]


class Log:
    """run.log: every line of the run, printed too."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8", buffering=1)

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")


def stream(cmd: list[str], env: dict, cwd: Path, log: Log, timeout: float, copy: Path | None = None) -> dict:
    """Run ``cmd`` with its output in the log (and in ``copy``); killed, with its process group, past ``timeout``."""
    start = time.monotonic()
    log(f"$ {' '.join(cmd)}  (at most {timeout:.0f} s)")
    if timeout <= 0:
        log("  skipped: no time left")
        return {"rc": None, "seconds": 0.0, "timed_out": True}
    sink = open(copy, "w", encoding="utf-8") if copy else None
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace", bufsize=1, start_new_session=True)

    def relay():  # the reader: lines reach the log as they come, whatever the main thread waits for
        for line in proc.stdout:
            log(line.rstrip("\n"))
            if sink:
                sink.write(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        log(f"  stopped at its limit of {timeout:.0f} s")
    try:  # the whole group, also children that outlive their leader or ignore SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    reader.join(5)
    if sink:
        sink.close()
    return {"rc": proc.wait(), "seconds": round(time.monotonic() - start, 1), "timed_out": timed_out}


def collect(work: Path, out: Path, name: str, log: Log) -> dict:
    """What the call brings back, from the study's folders under ``work``: the report, the results, the trained MAW
    parameters of every complete run."""
    reports = sorted(work.glob(f"experiments/**/_studies/{name}/report.md"))
    if reports:
        shutil.copy2(reports[0], out / "study_report.md")
    runs = work / "runs" / name
    complete = sorted(p.parent for p in runs.glob("*/*/seed_*/train_summary.json"))
    params = {}
    for run in complete:
        key = run.relative_to(runs).as_posix()
        maw = run / "final" / "maw_model.safetensors"
        if maw.is_file():
            params.update({f"{key}/{k}": v.contiguous() for k, v in load_file(str(maw)).items()})
    if params:
        save_file(params, str(out / "maw_parameters.safetensors"))
    keep = ("train_summary.json", "train_config.json", "metrics.jsonl", "README.md", "maw_card.json",
            "eval_results.json")
    # when it is too large, the per-pair scores and runs go first, then all but the summaries and reports
    for keep_only in (None, lambda p: not p.name.endswith((".tsv", ".trec", ".png")),
                      lambda p: p.name.startswith(("summary", "report"))):
        with tarfile.open(out / "study_results.tar.gz", "w:gz") as tar:
            if (work / "experiments").is_dir():
                for path in sorted((work / "experiments").rglob("*")):
                    if path.is_file() and (keep_only is None or keep_only(path)):
                        tar.add(path, arcname=path.relative_to(work).as_posix())
            for run in complete:
                for path in [run / k for k in keep] + [run / "final" / k for k in keep]:
                    if path.is_file():
                        tar.add(path, arcname=path.relative_to(work).as_posix())
        if (out / "study_results.tar.gz").stat().st_size <= OUT_LIMIT:
            break
    log(f"collected: {len(complete)} complete trainings, {len(params)} MAW tensors, report "
        f"{'found' if reports else 'missing'}")
    return {"complete_trainings": [r.relative_to(runs).as_posix() for r in complete], "maw_tensors": len(params),
            "report": bool(reports)}


def run(bundle: Path, out: Path, device: str, quick: bool, deadline_s: float, check_s: float, reserve_s: float,
        work: Path | None = None, check_only: list[str] | None = None, start: float | None = None) -> dict:
    """gpu_check, then the study under the time guard, then what comes back: see the module's docstring. ``start``:
    the monotonic time the deadline counts from (default: this process's start)."""
    start = START if start is None else start
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "run.log")
    summary: dict = {"device": device, "quick": quick, "deadline_s": deadline_s, "steps": {}}
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        work = Path(work or tempfile.mkdtemp(prefix="maw-gpu-"))
        (work / "study").mkdir(parents=True, exist_ok=True)
        log(f"gpu_bundle run: device {device}, quick {quick}, deadline {deadline_s:g} s, work folder {work}")
        summary["wheels_installed"] = install_wheels(bundle, work / "site", log.file)
        log(f"wheels installed: {summary['wheels_installed'] or 'none needed'}")
        snapshot = seed_cache(bundle, work / "hf")
        unpack_data(bundle, work / "data", manifest)
        log(f"checkpoint {CROSS_ENCODER} at {snapshot}; data at {work / 'data'} ({len(manifest['data'])} files)")
        # the run's own cache and data only (HUGGINGFACE_HUB_CACHE, say, would take precedence over HF_HOME)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1", MAW_DATA=str(work / "data"), PYTHONUNBUFFERED="1",
                   MAW_CONFIG_PATH=str(REPO / "benchmarks" / "configs"), TOKENIZERS_PARALLELISM="false",
                   PYTHONPATH=os.pathsep.join([str(work / "site"), str(REPO),
                                               *filter(None, [env.get("PYTHONPATH")])]))
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        if check_s > 0:
            if check_only is None and quick:  # the test suite runs gpu_check's tests step on a CPU anyway
                from gpu_check import STEPS

                check_only = [step for step in STEPS if step != "tests"]
            # its own guard starts no step past 60% of its limit; the limit stops one that runs over
            check = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", device,
                     "--deadline-s", f"{0.6 * check_s:.0f}", *(["--quick"] if quick else []),
                     *(["--only", *check_only] if check_only else [])]
            summary["steps"]["gpu_check"] = stream(check, env, work / "study", log, check_s,
                                                   copy=out / "gpu_check.md")
        # the study's clock starts after its imports and test sets load (STARTUP_S); the hard stop, COLLECT_S
        # before the deadline, leaves time for the kill and for collecting what is there
        left = deadline_s - (time.monotonic() - start)
        summary["time_budget_s"] = budget = round(max(0.0, left - reserve_s - STARTUP_S))
        study = [sys.executable, "-m", "maw_reranker.cli.main", "study", "--config", manifest["study"],
                 "--time-budget-s", str(budget), *(["--quick-run"] if quick else [])]
        summary["steps"]["study"] = stream(study, env, work / "study", log, left - COLLECT_S)
        summary.update(collect(work / "study", out, manifest["study"] + ("-quick" if quick else ""), log))
    except BaseException as exc:  # noqa: BLE001 - recorded in run.json, then raised
        summary["error"] = f"{type(exc).__name__}: {exc}"
        log(f"gpu_bundle run: {summary['error']}")
        raise
    finally:
        summary["seconds"] = round(time.monotonic() - start, 1)
        (out / "run.json").write_text(json.dumps(summary, indent=1) + "\n")
        log(f"gpu_bundle run: {summary['seconds']:.0f} s; files in {out}: "
            f"{', '.join(sorted(p.name for p in out.iterdir()))}")
        log.file.close()
        for path in (out / "run.log", out / "gpu_check.md"):  # what comes back: 16 MiB a file, the end kept
            if path.is_file() and path.stat().st_size > OUT_LIMIT:
                tail = path.read_bytes()[-(OUT_LIMIT - 2**20):]
                path.write_bytes(b"[... the start is cut: 16 MiB a file come back]\n" + tail)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the bundle (here)")
    p.add_argument("bundle", nargs="?", default=".gpu", type=Path)
    p.add_argument("--models", type=Path, default=None,
                   help=f"get-models.sh's folder (holding {MODEL}/) or the checkpoint folder (default: the snapshot "
                        f"of {CROSS_ENCODER} in the Hugging Face cache)")
    p.add_argument("--data", type=Path, default=data_root(), help="the local data copies (default: $MAW_DATA)")
    p.add_argument("--study", default=STUDY, help=f"the study config whose data is packed (default: {STUDY})")
    r = sub.add_parser("run", help="gpu_check, then the study, under one time guard (on the GPU machine)")
    r.add_argument("bundle", nargs="?", default=".gpu", type=Path)
    r.add_argument("--out", type=Path, required=True, help="where the files that come back go ($OUT there)")
    r.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    r.add_argument("--quick", action="store_true", help="gpu_check --quick and the study's quick settings")
    r.add_argument("--deadline-s", type=float, default=530.0,
                   help="the whole run ends within this many seconds (default 530: under 9 minutes)")
    r.add_argument("--check-s", type=float, default=120.0, help="at most this long for gpu_check.py (0: skip it)")
    r.add_argument("--reserve-s", type=float, default=150.0,
                   help="of the deadline, what the study keeps for its evaluation and report after the trainings")
    r.add_argument("--check-only", nargs="*", default=None,
                   help="gpu_check.py's steps to run (default: all; with --quick all but tests)")
    r.add_argument("--work", type=Path, default=None, help="the work folder (default: a new temporary one)")
    u = sub.add_parser("unpack", help="rebuild the checkpoint alone (on the GPU machine)")
    u.add_argument("bundle", nargs="?", default=".gpu", type=Path)
    u.add_argument("models", type=Path)
    args = ap.parse_args()
    if args.command == "pack":
        pack(args.bundle, args.models, args.data, args.study)
    elif args.command == "run":
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        run(args.bundle, args.out, device, args.quick, args.deadline_s, args.check_s, args.reserve_s, args.work,
            args.check_only)
    else:
        print(unpack(args.bundle, args.models))


if __name__ == "__main__":
    main()
