"""Configuration: YAML files (composed, found by name), dataclass options -> argparse, shared option sections."""

from maw_reranker.config.files import ConfigError, deep_merge, find_config, list_configs, load_yaml_config
from maw_reranker.config.maw_spec import AUTO, parse_maw
from maw_reranker.config.parser import build_parser, options_to_dict, parse_options
from maw_reranker.config.sections import (DatasetOptions, ModelOptions, PoolOptions, Precision, dataset_from_options,
                                          resolve_model_path)

__all__ = [
    "AUTO", "ConfigError", "DatasetOptions", "ModelOptions", "PoolOptions", "Precision", "build_parser",
    "dataset_from_options", "deep_merge", "find_config", "list_configs", "load_yaml_config", "options_to_dict",
    "parse_maw", "parse_options", "resolve_model_path",
]
