"""`maw-rerank configs`: the configs shipped with the package, by kind; `--show NAME` prints one, composed."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
from dataclasses import dataclass, field
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
    print(f"packaged configs ({CONFIGS_DIR}); a configs/<kind>/ folder in the working directory comes first:")
    for kind in KINDS:
        print(f"  {kind}: {', '.join(list_configs(kind))}")
    return 0
