"""`maw-rerank configs`: the configs shipped with the package, by kind; `--show NAME` prints one, composed."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
from dataclasses import dataclass, field
from typing import Optional

import yaml

from maw_reranker.config.files import CONFIGS_DIR, KINDS, config_roots, list_configs, load_yaml_config, require_config

HELP = ("List the configs (datasets, models, suites, training, studies) that --config accepts by name: the working directory's configs/, those of $MAW_CONFIG_PATH, and the packaged ones; or print one with its defaults composed.")


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
    for root in config_roots()[:-1]:  # the working directory's and $MAW_CONFIG_PATH's come first
        local = {kind: sorted(p.stem for p in (root / kind).glob("*.yaml")) for kind in KINDS}
        if any(local.values()):
            print(f"in {root} (these come first):")
            for kind, names in local.items():
                if names:
                    print(f"  {kind}: {', '.join(names)}")
    return 0
