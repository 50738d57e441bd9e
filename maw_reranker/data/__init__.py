"""Data layer: named datasets (ir_datasets), local datasets, and TREC run/qrels files."""

from maw_reranker.data.dataset import Dataset, DatasetDownloadError, DocsMapping, doc_text
from maw_reranker.data.measures import MetricError, check_measures, measure_names, parse_measures
from maw_reranker.data.load import load_dataset
from maw_reranker.data.registry import REGISTRY, DatasetSpec, get_spec, list_datasets
from maw_reranker.data.trec import DataFormatError, read_qrels, read_run, write_qrels, write_run

__all__ = [
    "Dataset", "DatasetDownloadError", "DatasetSpec", "DataFormatError", "DocsMapping", "REGISTRY", "MetricError", "check_measures",
    "doc_text", "measure_names", "parse_measures",
    "get_spec", "list_datasets", "load_dataset", "read_qrels", "read_run", "write_qrels", "write_run",
]
