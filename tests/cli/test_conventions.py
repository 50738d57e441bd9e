"""The command line as users of transformers / sentence-transformers know it: bare boolean flags and --no-<flag>,
lists of several values, choices and types in the metavar, both spellings of an option, --debug anywhere, one
vocabulary across commands with the old names refused, and each command's summary in `maw-rerank --help`."""

import argparse
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from maw_reranker.cli.main import COMMANDS, main
from maw_reranker.config.files import ConfigError
from maw_reranker.config.parser import build_parser, parse_options


@dataclass
class Toy:
    RENAMED = {"out_dir": "use 'output_dir'"}

    output_dir: str = field(default="out", metadata={"help": "folder"})
    force: bool = field(default=False, metadata={"help": "redo"})
    progress: bool = field(default=True, metadata={"help": "bar"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds"})
    measures: Optional[list[str]] = field(default=None, metadata={"help": "measures"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "precision"})
    batch_size: int = field(default=8, metadata={"help": "batch"})


@dataclass
class Child(Toy):
    RENAMED = {"n_negatives": "use 'num_negatives'"}


def parse(*argv, cls=Toy):
    parser = build_parser(cls, argparse.ArgumentParser(prog="toy"))
    return parse_options(cls, parser.parse_args(list(argv)))


def test_bare_boolean_flags_and_no_flags():
    assert parse("--force").force is True
    assert parse("--no-progress").progress is False and parse("--no_progress").progress is False
    assert parse("--force", "false").force is False and parse("--progress", "true").progress is True
    assert parse().force is False and parse().progress is True
    assert parse("--force", "--batch-size", "3").batch_size == 3  # a bare flag does not swallow the next option


def test_lists_take_several_values_and_the_old_forms():
    assert parse("--seeds", "0", "1", "2").seeds == [0, 1, 2]
    assert parse("--seeds", "0,1").seeds == [0, 1] and parse("--seeds", "[3, 4]").seeds == [3, 4]
    assert parse("--seeds", "5").seeds == [5]
    assert parse("--measures", "nDCG@10", "RR@10").measures == ["nDCG@10", "RR@10"]
    with pytest.raises(ConfigError, match="option 'seeds' expects a list of int"):
        parse("--seeds", "0", "x")


def test_both_spellings_and_choices():
    assert parse("--batch_size", "4").batch_size == 4 and parse("--batch-size", "5").batch_size == 5
    assert parse("--output_dir", "a").output_dir == "a"
    with pytest.raises(ConfigError, match="allowed values: fp32, bf16, fp16"):
        parse("--precision", "int8")


def test_metavars_say_what_an_option_takes():
    text = build_parser(Toy, argparse.ArgumentParser(prog="toy")).format_help()
    for shown in ("--precision {fp32,bf16,fp16}", "--batch-size INT", "--seeds INT [INT ...]", "--force [BOOL]",
                  "--output-dir STR"):
        assert shown in text, (shown, text)
    assert "VALUE" not in text


def test_old_names_are_refused_naming_the_new_one_also_from_a_base_class(tmp_path):
    with pytest.raises(ConfigError, match="option 'out_dir' was renamed: use 'output_dir'"):
        parse("--out-dir", "x")
    with pytest.raises(ConfigError, match="option 'out_dir' was renamed"):
        parse("--out_dir", "x", cls=Child)  # RENAMED of the base class still holds
    with pytest.raises(ConfigError, match="option 'n_negatives' was renamed: use 'num_negatives'"):
        parse("--n-negatives", "3", cls=Child)
    config = tmp_path / "c.yaml"
    config.write_text("out_dir: x\n")
    with pytest.raises(ConfigError, match=rf"{config}: option 'out_dir' was renamed"):
        parse("--config", str(config))


@pytest.mark.parametrize("command,old,new", [
    ("eval", "--out-dir", "output_dir"), ("suite", "--out-dir", "output_dir"), ("study", "--runs-dir", "models_dir"),
    ("build-pools", "--engine", "pool_engine"), ("build-pools", "--k", "pool_k"), ("build-pools", "--out-dir", "pools_dir"),
    ("train", "--overwrite", "force"), ("train", "--progress-bar", "progress"), ("train", "--n-negatives", "num_negatives"),
    ("train", "--neg-sampling", "sampling_strategy"), ("mine-negatives", "--output", "output_run"),
    ("mine-negatives", "--rank-min", "neg_rank_min"), ("mine-negatives", "--sampling", "sampling_strategy"),
    ("demo", "--out-dir", "output_dir")])
def test_every_command_refuses_its_old_names(command, old, new, capsys):
    assert main([command, old, "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"was renamed: use '{new}'" in err and "Traceback" not in err


def test_one_vocabulary_across_commands():
    """An option that means the same in several commands has one name: the output folder, redo, progress."""
    import importlib

    from maw_reranker.config.parser import _fields

    names = {name: {f.name for f in _fields(importlib.import_module(module).Options)}
             for name, (module, _) in COMMANDS.items()}
    for banned in ("out_dir", "overwrite", "progress_bar", "n_negatives", "neg_sampling", "runs_dir", "output",
                   "rank_min", "rank_max", "sampling", "engine", "k"):
        assert not [c for c, fields in names.items() if banned in fields], banned
    assert "output_dir" in names["eval"] & names["suite"] & names["train"] & names["study"] & names["demo"]
    assert "pools_dir" in names["build-pools"] & names["eval"] & names["train"] & names["mine-negatives"]
    assert {"num_negatives", "neg_rank_min", "neg_rank_max", "sampling_strategy"} <= \
        names["train"] & names["mine-negatives"]


def test_debug_and_verbose_anywhere(capsys, tmp_path):
    args = ["eval", "--dataset", str(tmp_path / "missing"), "--model", "x/y"]
    assert main(args) == 1
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(Exception):  # --debug after the command: the error propagates with its traceback
        main(args + ["--debug"])
    with pytest.raises(Exception):
        main(["--debug"] + args)


def test_main_help_lists_what_each_command_does(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        assert name in out and summary.split()[0] in out
    assert "see `maw-rerank" not in out


def test_eval_force_and_suite_dry_run_as_bare_flags(model_dir, tmp_path, capsys):
    from tests.data.fixtures import write_tsv_layout

    paths = write_tsv_layout(tmp_path / "col")
    args = ["eval", "--dataset", str(paths["docs"]), "--queries", str(paths["queries"]), "--qrels",
            str(paths["qrels"]), "--run", str(paths["run"]), "--model", model_dir, "--output-dir", str(tmp_path / "e"),
            "--no-progress", "--no-plots", "--variant", "v"]
    assert main(args) == 0
    assert main(args) == 0 and "complete already" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0 and "wrote" in capsys.readouterr().out
    assert main(["suite", "--config", "main", "--dry-run", "--seeds", "0", "1"]) == 0
    assert "12 runs planned" in capsys.readouterr().out  # 3 datasets x 2 variants x 2 seeds


def test_a_list_given_in_python_is_taken_as_it_is():
    """Only a single command-line value is parsed as written; a Python list of one element keeps its element whole."""
    assert parse_options(Toy, {"measures": ["P(rel=2,judged_only)@10"]}).measures == ["P(rel=2,judged_only)@10"]
    assert parse("--measures", "nDCG@10,RR@10").measures == ["nDCG@10", "RR@10"]
