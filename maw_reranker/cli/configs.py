"""`maw-rerank configs`: the configs shipped with the package, by kind; `--show NAME` prints one, composed."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from maw_reranker.config.files import CONFIGS_DIR, KINDS, list_configs, load_yaml_config, require_config

HELP = ("List the packaged configs (datasets, models, suites, training) that --config accepts by name, or print "
        "one with its defaults composed.")


@dataclass
class Options:
    show: Optional[str] = field(default=None, metadata={"help": "print this config (a name or a file), composed"})


def run(options: Options) -> int:
    if options.show:
        path = require_config(options.show, KINDS, "option 'show'")
        print(f"# {path}")
        print(yaml.safe_dump(load_yaml_config(path), sort_keys=False).rstrip())
        return 0
    print(f"packaged configs ({CONFIGS_DIR}):")
    for kind in KINDS:
        print(f"  {kind}: {', '.join(list_configs(kind))}")
    local = {kind: sorted(p.stem for p in (Path.cwd() / "configs" / kind).glob("*.yaml")) for kind in KINDS}
    if any(local.values()):
        print(f"in {Path.cwd() / 'configs'} (these come first):")
        for kind, names in local.items():
            if names:
                print(f"  {kind}: {', '.join(names)}")
    return 0
