"""qrels: a (query, document) pair judged twice is an error naming both lines (or, on request, the last one wins
with a warning); a qrels file without judgments is an error naming it. TREC runs name both lines of a duplicate."""

from __future__ import annotations

import logging
import re

import pytest

from maw_reranker.data import DataFormatError, load_dataset, read_qrels, read_run
from tests.data.fixtures import QRELS, write_beir, write_tsv_layout


def test_a_duplicate_pair_names_both_lines(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 2\nq2 0 d2 1\n\nq1 0 d1 0\n")
    with pytest.raises(DataFormatError) as err:
        read_qrels(path)
    message = str(err.value)
    assert message.startswith(f"{path}:4: duplicate judgment of document 'd1' for query 'q1'")
    assert f"grade 2 at {path}:1" in message and "grade 0 here" in message


def test_a_duplicate_pair_in_a_beir_split_is_an_error(tmp_path):
    folder = write_beir(tmp_path / "toy")
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q5\td5\t0\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{qrels}:8: duplicate judgment of document 'd5' for query "
                                                        f"'q5': grade 0 here, grade 1 at {qrels}:6")):
        load_dataset(folder).qrels()
    with pytest.raises(DataFormatError, match="duplicate judgment"):
        load_dataset(folder).queries()  # a BEIR split's queries are those its qrels judge


def test_last_wins_on_request_with_a_warning(tmp_path, caplog):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 2\nq2 0 d2 1\nq1 0 d1 0\nq2 0 d2 3\n")
    with caplog.at_level(logging.WARNING):
        assert read_qrels(path, duplicates="last") == {"q1": {"d1": 0}, "q2": {"d2": 3}}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: 2 duplicate (query, document) judgments, the last one wins")
    assert "line 1 overridden by line 3" in warnings[0]


def test_last_wins_through_load_dataset(tmp_path, caplog):
    paths = write_tsv_layout(tmp_path / "set")
    paths["qrels"].write_text(paths["qrels"].read_text() + "q1 0 d1 3\n")
    ds = load_dataset(paths["docs"], queries=paths["queries"], qrels=paths["qrels"], qrels_duplicates="last")
    with caplog.at_level(logging.WARNING):
        assert ds.qrels() == {**QRELS, "q1": {"d1": 3}}
    assert any("the last one wins" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataFormatError, match="qrels.txt:7: duplicate judgment"):
        load_dataset(paths["docs"], queries=paths["queries"], qrels=paths["qrels"]).qrels()


def test_the_duplicates_option_is_checked(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\n")
    with pytest.raises(ValueError, match="option 'duplicates' must be one of 'error', 'last', got 'first'"):
        read_qrels(path, duplicates="first")
    paths = write_tsv_layout(tmp_path / "set")
    with pytest.raises(ValueError, match="option 'qrels_duplicates' must be one of"):
        load_dataset(paths["docs"], queries=paths["queries"], qrels_duplicates="sum")


@pytest.mark.parametrize("content", ["", "\n\n", "query-id\tcorpus-id\tscore\n"], ids=["empty", "blank", "header"])
def test_a_qrels_file_without_judgments_is_an_error(tmp_path, content):
    path = tmp_path / "qrels.tsv"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: no relevance judgments")):
        read_qrels(path)


def test_an_empty_beir_split_is_an_error(tmp_path):
    folder = write_beir(tmp_path / "toy")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataFormatError, match=r"test.tsv: no relevance judgments"):
        load_dataset(folder).qrels()


def test_a_header_after_blank_lines_and_with_a_bom_is_still_a_header(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_bytes(b"\xef\xbb\xbf\nquery-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert read_qrels(path) == {"q1": {"d1": 1}}


def test_a_duplicate_run_line_names_both_lines(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq1 Q0 d1 3 0.5 x\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: duplicate document 'd1' for query 'q1' "
                                                        f"(first at {path}:1)")):
        read_run(path)


def _read_streamed(path):
    from maw_reranker.data.trec import iter_run_rows

    return list(iter_run_rows(path))


@pytest.mark.parametrize("reader", [read_run, _read_streamed], ids=["read_run", "iter_run_rows"])
def test_streamed_runs_are_checked_as_read_runs(tmp_path, reader):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq1 Q0 d1 3 0.5 x\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: duplicate document 'd1' for query 'q1' "
                                                        f"(first at {path}:1)")):
        reader(path)
    path.write_text("\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}: the run is empty")):
        reader(path)


def test_a_streamed_run_keeps_each_query_together(tmp_path):
    # Read one query at a time, a query's second block would be a second pool, and a duplicate in it unseen.
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.0 x\nq2 Q0 d1 1 1.0 x\nq1 Q0 d1 2 0.5 x\n")
    with pytest.raises(DataFormatError, match=re.escape(f"{path}:3: the lines of query 'q1' are not contiguous (it "
                                                        f"began at {path}:1)")):
        _read_streamed(path)
    path.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq2 Q0 d1 1 1.0 x\n")
    assert _read_streamed(path) == [("q1", "d1", 2.0), ("q1", "d2", 1.0), ("q2", "d1", 1.0)]


def test_streaming_training_refuses_a_duplicate_run_line(tmp_path):
    from maw_reranker.train import train
    from tests.train.helpers import options, tiny_model_dir, write_task

    task = write_task(tmp_path / "t")
    lines = task["run"].read_text().splitlines()
    task["run"].write_text("\n".join(lines[:5] + [lines[2]] + lines[5:]) + "\n")  # line 6 repeats line 3
    opts = options(tmp_path, task, tiny_model_dir(tmp_path / "m"), streaming=True, shuffle_buffer=5, max_steps=2)
    docid = lines[2].split()[2]
    with pytest.raises(DataFormatError, match=re.escape(f"{task['run']}:6: duplicate document '{docid}' for query "
                                                        f"'q0' (first at {task['run']}:3)")):
        train(opts)
