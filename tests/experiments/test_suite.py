"""Suite planning: variant/dataset entries, grids, and errors that name the entry."""

import pytest

from maw_reranker.config.files import ConfigError
from maw_reranker.experiments import suite


def test_suite_plan_errors(tmp_path):
    opts = suite.SuiteOptions(datasets=["x"], variants=[{"name": "a", "maw": None, "modle": "m"}], baseline="a")
    with pytest.raises(ConfigError, match="modle"):
        suite.plan(opts)
    with pytest.raises(ConfigError, match="baseline 'zzz'"):
        suite.plan(suite.SuiteOptions(datasets=["x"], variants=["non_maw"], baseline="zzz"))
    with pytest.raises(ConfigError, match="duplicate"):
        suite.variant_entries(["non_maw", "non_maw"])
    with pytest.raises(ConfigError, match="not found"):
        suite.variant_entries(["no_such_variant"])


def test_variant_and_seed_placeholders(tmp_path):
    opts = suite.SuiteOptions(datasets=[{"dataset": "scifact"}], seeds=[3, 4], baseline="a",
                              variants=[{"name": "a", "model": str(tmp_path / "{variant}" / "seed_{seed}"),
                                         "maw": None}])
    runs = suite.expand(opts)
    assert [r.model for r in runs] == [str(tmp_path / "a" / "seed_3"), str(tmp_path / "a" / "seed_4")]
