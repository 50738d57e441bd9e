"""`maw-rerank` entry point. Each command lives in its own module exposing ``HELP``, ``Options`` and ``run``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from maw_reranker.cli.errors import DEBUG_ENV, debug_requested, describe, interrupted
from maw_reranker.config import build_parser, parse_options
from maw_reranker.utils.errors import OptionError

# command name -> (module, one-line summary for `maw-rerank --help`); modules are imported lazily so that
# `maw-rerank --help` stays fast. Each module's HELP is the command's own longer description.
COMMANDS = {
    "build-pools": ("maw_reranker.cli.build_pools", "BM25 top-k candidate pools (Pyserini or bm25s), cached"),
    "eval": ("maw_reranker.cli.eval", "rerank a candidate pool with a cross-encoder and evaluate it"),
    "suite": ("maw_reranker.cli.suite", "variants x seeds x datasets from YAML, with significance tests"),
    "train": ("maw_reranker.cli.train", "fine-tune a cross-encoder (full, top layers, MAW-only or LoRA)"),
    "mine-negatives": ("maw_reranker.cli.mine", "mine hard negatives into a TREC run that train reads"),
    "study": ("maw_reranker.cli.study", "train and evaluate every variant x seed of a study; one report"),
    "push": ("maw_reranker.cli.push", "upload a saved model with its model card to the Hugging Face Hub"),
    "demo": ("maw_reranker.cli.demo", "the whole pipeline offline on a built-in demo collection"),
    "datasets": ("maw_reranker.cli.datasets", "the named datasets (ir_datasets ids, primary measures)"),
    "configs": ("maw_reranker.cli.configs", "the configs --config accepts by name; --show NAME prints one"),
}
# Global flags, taken wherever they stand (before or after the command).
GLOBAL_FLAGS = {"--debug": "debug", "-v": "verbose", "--verbose": "verbose"}


def _load(name: str):
    try:
        return importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name][0]:
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {dest: False for dest in GLOBAL_FLAGS.values()}
    for flag, dest in GLOBAL_FLAGS.items():
        flags[dest] = flags[dest] or flag in argv
    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    parser = argparse.ArgumentParser(prog="maw-rerank", allow_abbrev=False, description="MAW cross-encoder reranking: pools, training, "
                                     "evaluation. `maw-rerank COMMAND --help` lists a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (anywhere on the line)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the "
                        f"line; also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen command's module is imported; the others are listed with their summaries.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (_, summary) in COMMANDS.items():
        if name == chosen:
            module = _load(name)
            if module is None:
                continue
            cmd_parser = sub.add_parser(name, help=summary, description=module.HELP)
            build_parser(module.Options, cmd_parser)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    args = parser.parse_args(argv)
    args.verbose, args.debug = flags["verbose"], flags["debug"]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.command:
        parser.print_help()
        return 2
    if not args.verbose:
        _quiet_libraries()
    module = _load(args.command)
    if module is None:
        parser.error(f"command '{args.command}' is not available in this installation")
    values = {k: v for k, v in vars(args).items() if k not in {"command", "verbose", "debug"}}
    try:
        options = parse_options(module.Options, values)
        result = module.run(options)
    except BrokenPipeError:  # the reader went away (`maw-rerank configs | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if debug_requested(args.debug):
            raise
        print(f"maw-rerank {args.command}: interrupted (complete outputs are kept; a partial one is not)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into one line
        if debug_requested(args.debug):
            raise
        if interrupted(exc):
            print(f"maw-rerank {args.command}: interrupted", file=sys.stderr)
            return 130
        print(f"maw-rerank {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, OptionError) else 1
    return int(result or 0)


def _quiet_libraries() -> None:
    """Our own progress bars report the work; the libraries' per-file loading bars only add noise."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


if __name__ == "__main__":
    sys.exit(main())
