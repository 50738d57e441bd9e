"""Bad inputs fail before training (before the model is even loaded), with messages that name the problem."""

from __future__ import annotations

import pytest

from maw_reranker.config import ConfigError, parse_options
from maw_reranker.data.trec import DataFormatError
from maw_reranker.train import train
from maw_reranker.train.config import TrainOptions
from maw_reranker.train.sources import TrainingDataError
from tests.train.helpers import options, write_task

NO_MODEL = "/nonexistent/model"  # data and config errors must come first, so the model is never read


def test_empty_training_set(tmp_path):
    task = write_task(tmp_path / "t")
    qrels = task["dataset"] / "qrels" / "train.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n")
    # An empty qrels file is an error naming the file (issue 11), before any model is loaded.
    with pytest.raises(DataFormatError, match=f"{qrels}: no relevance judgments"):
        train(options(tmp_path, task, NO_MODEL))


def test_no_query_has_a_positive(tmp_path):
    task = write_task(tmp_path / "t", no_positive=True)
    with pytest.raises(TrainingDataError, match="no query has a positive"):
        train(options(tmp_path, task, NO_MODEL))


def test_graded_threshold_and_queries_without_positives(tmp_path):
    task = write_task(tmp_path / "t")
    qrels = task["dataset"] / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join([lines[0], lines[1].replace("\t1", "\t2")] + lines[2:]) + "\n")
    # threshold 2: only q0 has a positive; the others have none
    with pytest.raises(TrainingDataError, match=r"11 queries have no positive \(grade >= 2\): q1, q10"):
        train(options(tmp_path, task, NO_MODEL, relevance_threshold=2, allow_missing_positives=False))


def test_max_negative_grade_must_stay_below_the_threshold():
    with pytest.raises(ValueError, match="'max_negative_grade' must be >= 0 and < relevance_threshold"):
        TrainOptions(model="m", dataset="d", relevance_threshold=2, max_negative_grade=2).validate()
    TrainOptions(model="m", dataset="d", relevance_threshold=2, max_negative_grade=1).validate()


def test_negatives_missing_from_corpus(tmp_path):
    task = write_task(tmp_path / "t", missing_doc="ghost-doc")
    with pytest.raises(TrainingDataError, match="1 negative candidates of .* missing from the corpus: ghost-doc"):
        train(options(tmp_path, task, NO_MODEL))


def test_no_negative_in_window(tmp_path):
    task = write_task(tmp_path / "t")
    with pytest.raises(TrainingDataError, match="no query has a non-relevant candidate at ranks 500-600"):
        train(options(tmp_path, task, NO_MODEL, neg_rank_min=500, neg_rank_max=600))


def test_missing_run_file(tmp_path):
    task = write_task(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match="candidates.*file not found"):
        train(options(tmp_path, task, NO_MODEL, candidates=str(tmp_path / "nope.run")))


def test_bad_config_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: m\ndataset: d\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'lerning_rate'"):
        parse_options(TrainOptions, {"config": [str(config)]})


def test_bad_config_values(tmp_path):
    with pytest.raises(ConfigError, match="option 'loss' got 'hinge'"):
        parse_options(TrainOptions, {"model": "m", "dataset": "d", "loss": "hinge"})
    with pytest.raises(ConfigError, match="option 'report_to' got 'mlflow'"):
        parse_options(TrainOptions, {"model": "m", "dataset": "d", "report_to": "mlflow"})
    task = write_task(tmp_path / "t")
    cases = [
        ({"maw": {"gating_mode": "learned", "depthdim": 4}}, r"option 'maw': unknown MAWConfig field\(s\) \['depthdim'\]"),
        ({"maw": {"gating_mode": "magic"}}, "gating_mode' got 'magic'"),
        ({"neg_rank_min": 50, "neg_rank_max": 10}, "'neg_rank_max' .* is below 'neg_rank_min'"),
        ({"router_oracle_weight": 1.0}, "router_oracle_weight' applies to maw.gating_mode 'router' only"),
        ({"trainable": "maw_only"}, "needs a MAW variant"),
        ({"batch_size": 0}, "'batch_size' must be >= 1"),
        ({"dev_measure": "nDCG@ten"}, "dev_measure"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            train(options(tmp_path, task, NO_MODEL, **overrides))
    with pytest.raises(ValueError, match="option 'model' is empty"):
        train(options(tmp_path, task, ""))


def test_too_little_data_for_one_step(tmp_path):
    task = write_task(tmp_path / "t", n_queries=3)
    with pytest.raises(ValueError, match="3 training groups make less than one optimizer step"):
        train(options(tmp_path, task, NO_MODEL, batch_size=4, max_steps=None))


def test_positives_missing_from_the_corpus_error_or_skip(tmp_path):
    task = write_task(tmp_path / "t")
    qrels = task["dataset"] / "qrels" / "train.tsv"
    qrels.write_text(qrels.read_text() + "q0\td404\t1\n")
    with pytest.raises(TrainingDataError, match="positive documents of the qrels missing.*d404.*missing_positives"):
        train(options(tmp_path, task, NO_MODEL))
    from maw_reranker.train.sources import load_training_data

    data = load_training_data(options(tmp_path, task, NO_MODEL, missing_positives="skip"))
    assert data.description["queries_with_positive"] == 12  # q0 keeps its other positive


def test_a_docs_file_dev_set(tmp_path):
    from maw_reranker.train.sources import load_training_data
    from tests.data.fixtures import write_tsv_layout

    task = write_task(tmp_path / "t")
    dev = write_tsv_layout(tmp_path / "dev")
    data = load_training_data(options(tmp_path, task, NO_MODEL, dev_dataset=str(dev["docs"]),
                                      dev_queries=str(dev["queries"]), dev_qrels=str(dev["qrels"]),
                                      dev_run=str(dev["run"])))
    assert set(data.dev.queries) == {"q1", "q2"} and data.dev.candidates["q1"] == ["d2", "d1"]
    with pytest.raises(ValueError, match="option 'dev_dataset'.*queries"):  # named, and what it needs
        load_training_data(options(tmp_path, task, NO_MODEL, dev_dataset=str(dev["docs"])))
