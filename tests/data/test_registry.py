import ir_datasets
import pytest

from maw_reranker.cli.main import main
from maw_reranker.data import Dataset, DatasetSpec, list_datasets, load_dataset

REQUIRED = {
    "MSMARCO/dev-small": ("msmarco-passage/dev/small", ["RR@10", "R@1000"]),
    "TREC-DL-2019-passage": ("msmarco-passage/trec-dl-2019/judged", ["nDCG@10", "RR(rel=2)@10", "R(rel=2)@1000"]),
    "TREC-DL-2020-passage": ("msmarco-passage/trec-dl-2020/judged", ["nDCG@10", "RR(rel=2)@10", "R(rel=2)@1000"]),
    "scifact": ("beir/scifact/test", ["nDCG@10", "R@100"]),
    "nfcorpus": ("beir/nfcorpus/test", ["nDCG@10", "R@100"]),
    "fiqa": ("beir/fiqa/test", ["nDCG@10", "R@100"]),
    "trec-covid": ("beir/trec-covid", ["nDCG@10", "R@100"]),
    "scidocs": ("beir/scidocs", ["nDCG@10", "R@100"]),
    "arguana": ("beir/arguana", ["nDCG@10", "R@100"]),
    "nq": ("beir/nq", ["nDCG@10", "R@100"]),
    "MSMARCO/train": ("msmarco-passage/train", ["RR@10", "R@1000"]),
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_registry_entries_load_lazily_through_ir_datasets(name):
    irds_id, measures = REQUIRED[name]
    ds = load_dataset(name)  # offline: nothing is downloaded until data is read
    assert isinstance(ds, Dataset)
    assert ds.irds_id == irds_id and ds.measures == measures and ds.name == name
    assert ir_datasets.load(irds_id).has_queries()


def test_every_spec_names_real_ir_datasets_ids():
    for spec in list_datasets():
        assert isinstance(spec, DatasetSpec)
        for irds_id in spec.splits.values():
            assert irds_id in ir_datasets.registry, irds_id


def test_names_splits_aliases_and_ids_resolve():
    assert load_dataset("scifact", split="train").irds_id == "beir/scifact/train"
    assert load_dataset("scifact/train").irds_id == "beir/scifact/train"
    assert load_dataset("SciFact").split == "test"
    assert load_dataset("dl19").name == "TREC-DL-2019-passage"
    assert load_dataset("beir/nfcorpus/dev").split == "dev"
    assert load_dataset("MSMARCO/train/triples-small").irds_id == "msmarco-passage/train/triples-small"
    # Splits of one corpus share its indexes but not their pools.
    a, b = load_dataset("TREC-DL-2019-passage"), load_dataset("MSMARCO/dev-small")
    assert a.corpus_slug == b.corpus_slug and a.slug != b.slug
    assert load_dataset("scifact", measures=["RR@10"]).measures == ["RR@10"]


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        load_dataset("no-such-set")
    for name in REQUIRED:
        assert name in str(err.value)


def test_unknown_split_lists_splits():
    with pytest.raises(ValueError, match="splits: test, train"):
        load_dataset("scifact", split="dev")
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_dataset("scifact/dev")


def test_bad_measure_and_local_only_options_are_rejected():
    with pytest.raises(ValueError, match="'measures'"):
        load_dataset("scifact", measures=["nDCG@ten"])
    with pytest.raises(ValueError, match="local files only"):
        load_dataset("scifact", qrels="qrels.txt")


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        load_dataset(str(tmp_path / "nothing-here"))


def test_datasets_command_lists_registry(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "beir/scifact/test" in out and "RR(rel=2)@10" in out and "BEIR folder" in out
    assert main(["datasets", "--format", "json"]) == 0
    assert '"MSMARCO/dev-small"' in capsys.readouterr().out


def test_offline_download_failure_is_one_clear_error(monkeypatch):
    from maw_reranker.data import DatasetDownloadError

    ds = load_dataset("nfcorpus")

    def offline():
        raise ConnectionError("Failed to resolve 'public.ukp.informatik.tu-darmstadt.de'")

    monkeypatch.setattr(ds, "irds", type("Irds", (), {"queries_iter": staticmethod(offline)})())
    with pytest.raises(DatasetDownloadError, match=r"'nfcorpus' \(beir/nfcorpus/test\).*could not be downloaded.*local copy"):
        ds.queries()
