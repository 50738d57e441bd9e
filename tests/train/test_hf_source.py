"""source: hf: training groups from local parquet/jsonl files in each layout (tuples, labeled, scored), texts in the
rows or resolved by id, streaming, teacher scores from columns, and the errors before any model is loaded."""

from __future__ import annotations

from collections import Counter

import pytest

from maw_reranker.config.files import ConfigError
from maw_reranker.train.config import TrainOptions
from maw_reranker.train.sources import TrainingDataError, load_training_data
from tests.train.helpers import TOPICS, tiny_model_dir
from tests.data.fixtures import write_jsonl, write_parquet


def doc(topic: str) -> str:
    return f"{topic} the story of {topic}s"


def tuple_rows(scores: bool = False):
    rows = []
    for i, topic in enumerate(TOPICS[:8]):
        negs = [doc(t) for t in TOPICS[i + 1:i + 5]]
        row = {"q": f"{topic} story", "pos": doc(topic), "negs": negs}
        if scores:
            row.update(ps=10.0 + i, ns=[float(j) for j in range(len(negs))])
        rows.append(row)
    return rows


def hf_options(tmp_path, model="unused-model", **overrides) -> TrainOptions:
    base = dict(model=str(model), source="hf", output_dir=str(tmp_path / "out"), num_negatives=2, batch_size=2,
                max_steps=2, lr=5e-3, warmup_ratio=0.0, checkpoint_every=0, report_to=[], progress=False,
                max_length=32, seed=0)
    base.update(overrides)
    return TrainOptions(**base).validate()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def test_tuples_with_a_list_of_negatives_and_texts_in_the_rows(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", tuple_rows())
    data = load_training_data(hf_options(tmp_path, hf_dataset=str(path),
                                         hf_columns={"query": "q", "positive": "pos", "negatives": "negs"}))
    assert data.description["layout"] == "tuples" and data.description["groups_per_epoch"] == 8
    assert data.teacher is None
    groups = list(data.source.iter_epoch(0))
    assert len(groups) == 8 and all(len(g.negs) == 2 for g in groups)
    g = next(g for g in groups if g.qid == "apple story")
    assert g.pos == doc("apple") and set(g.negs) <= {doc(t) for t in TOPICS[1:5]}
    assert data.queries[g.qid] == "apple story" and data.docs[g.pos] == doc("apple")  # ids are the texts
    assert [g.negs for g in data.source.iter_epoch(0)] == [g.negs for g in groups]  # a pure function of the epoch


def test_numbered_negative_columns_and_top_sampling(tmp_path):
    rows = [{"query": "apple story", "positive": doc("apple"), "negative_1": doc("river"), "negative_2": doc("tiger"),
             "negative_3": doc("ocean")}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    data = load_training_data(hf_options(tmp_path, hf_dataset=str(path), sampling_strategy="top", batch_size=1))
    (group,) = data.source.iter_epoch(0)
    assert group.negs == (doc("river"), doc("tiger"))


def test_labeled_rows_are_grouped_by_query(tmp_path):
    rows = [{"query": "apple story", "document": doc("apple"), "label": 1},
            {"query": "apple story", "document": doc("river"), "label": 0},
            {"query": "apple story", "document": doc("tiger"), "label": 0},
            {"query": "river story", "document": doc("river"), "label": 2},
            {"query": "river story", "document": doc("apple"), "label": 0},
            {"query": "tiger story", "document": doc("tiger"), "label": 1}]  # no negative: skipped
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    data = load_training_data(hf_options(tmp_path, hf_dataset=str(path), batch_size=1))
    assert data.description["layout"] == "labeled" and data.description["skipped_queries"] == 1
    groups = list(data.source.iter_epoch(0))
    assert sorted(g.qid for g in groups) == ["apple story", "river story"]
    river = next(g for g in groups if g.qid == "river story")
    assert river.pos == doc("river") and river.negs == (doc("apple"), doc("apple"))  # topped up


def test_scored_ids_resolved_through_queries_and_corpus(tmp_path):
    corpus = write_parquet(tmp_path / "documents.parquet",
                           [{"document_id": f"d{i}", "text": doc(t)} for i, t in enumerate(TOPICS)])
    queries = write_parquet(tmp_path / "queries.parquet",
                            [{"query_id": f"q{i}", "text": f"{t} story"} for i, t in enumerate(TOPICS[:4])])
    rows = [{"query_id": f"q{i}", "document_ids": [f"d{(i + k) % 16}" for k in range(4)],
             "scores": [1.0, 9.0, 3.0, 2.0]} for i in range(4)]
    path = write_parquet(tmp_path / "train.parquet", rows)
    opts = hf_options(tmp_path, hf_dataset=str(path), hf_queries=str(queries), hf_corpus=str(corpus),
                      loss="margin_mse", sampling_strategy="top", batch_size=1)
    data = load_training_data(opts)
    assert data.description["layout"] == "scored" and data.teacher is not None
    g = next(g for g in data.source.iter_epoch(0) if g.qid == "q0")
    # the teacher's best document is the positive; "top" takes the hardest negatives, with their scores
    assert (g.pos, g.negs, g.teacher) == ("d1", ("d2", "d3"), (9.0, 3.0, 2.0))
    assert data.queries["q0"] == "apple story" and data.docs["d1"] == doc(TOPICS[1])
    assert data.teacher.group_scores([g]).tolist() == [[9.0, 3.0, 2.0]]

    missing = write_parquet(tmp_path / "missing.parquet", [{"query_id": "q0", "document_ids": ["d0", "zz"],
                                                            "scores": [1.0, 0.0]}])
    with pytest.raises(TrainingDataError,
                       match="1 documents of hf_dataset .*missing.parquet .*missing from the corpus: zz"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(missing), hf_queries=str(queries),
                                      hf_corpus=str(corpus), loss="margin_mse"))


def test_streaming_tuples(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{k if k != "q" else "query": v for k, v in r.items()}
                                              for r in tuple_rows(scores=True)])
    opts = hf_options(tmp_path, hf_dataset=str(path), streaming=True, shuffle_buffer=3,
                      hf_columns={"positive": "pos", "negatives": "negs", "positive_score": "ps",
                                  "negative_scores": "ns"})
    data = load_training_data(opts)
    assert data.source.streaming and data.teacher is not None
    groups = list(data.source.iter_epoch(0))
    assert Counter(g.qid for g in groups) == Counter(f"{t} story" for t in TOPICS[:8])
    assert [g.qid for g in groups] != [f"{t} story" for t in TOPICS[:8]]  # shuffled through the buffer
    for g in groups:  # sampled negatives keep their own teacher scores
        i = TOPICS.index(g.qid.split()[0])
        assert g.teacher[0] == 10.0 + i
        assert g.teacher[1:] == tuple(float(TOPICS[i + 1:i + 5].index(n.split()[0])) for n in g.negs)


def test_errors_name_the_column_and_the_file(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", tuple_rows())
    with pytest.raises(ValueError, match="t.parquet: no column 'question' \\(hf_columns: \\{query: question\\}\\); "
                                         "its columns: q, pos, negs"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), hf_columns={"query": "question"}))
    with pytest.raises(ValueError, match="t.parquet: cannot tell its layout"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path)))
    with pytest.raises(ConfigError, match="option 'source: hf' needs 'hf_dataset'"):
        hf_options(tmp_path)
    with pytest.raises(ConfigError, match="option 'hf_dataset' applies to source: hf"):
        hf_options(tmp_path, source="pool", dataset="x", hf_dataset=str(path))
    with pytest.raises(ConfigError, match="option 'hf_columns': unknown role 'querry'"):
        hf_options(tmp_path, hf_dataset=str(path), hf_columns={"querry": "q"})
    with pytest.raises(FileNotFoundError, match="option 'hf_dataset': file not found"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(tmp_path / "nope.parquet")))


def test_distillation_without_a_score_column(tmp_path, model):
    from maw_reranker.train import train

    path = write_parquet(tmp_path / "t.parquet", tuple_rows())
    with pytest.raises(TrainingDataError, match="loss 'listwise_kl' needs teacher scores"):
        train(hf_options(tmp_path, model, hf_dataset=str(path), loss="listwise_kl",
                         hf_columns={"query": "q", "positive": "pos", "negatives": "negs"}))


@pytest.mark.parametrize("streaming", [False, True])
def test_two_steps_on_tuples(tmp_path, model, streaming):
    from maw_reranker.train import train

    path = write_parquet(tmp_path / "t.parquet", tuple_rows())
    result = train(hf_options(tmp_path, model, hf_dataset=str(path), streaming=streaming,
                              hf_columns={"query": "q", "positive": "pos", "negatives": "negs"}))
    assert result.steps == 2 and (tmp_path / "out" / "final").is_dir()


def test_rows_of_ids_need_a_text_table(tmp_path):
    """Ids are never trained on as if they were texts: an id column (by its name) needs hf_queries / hf_corpus /
    dataset."""
    rows = [{"query_id": f"q{i}", "document_ids": [f"d{i}", f"d{i + 1}", f"d{i + 2}"], "scores": [3.0, 2.0, 1.0]}
            for i in range(4)]
    path = write_parquet(tmp_path / "scored.parquet", rows)
    with pytest.raises(TrainingDataError, match="scored.parquet: column 'query_id' holds query ids, and nothing "
                                                "gives their texts: set hf_queries .* or dataset"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="margin_mse"))
    queries = write_parquet(tmp_path / "queries.parquet", [{"query_id": f"q{i}", "text": f"query {i}"}
                                                           for i in range(4)])
    with pytest.raises(TrainingDataError, match="column 'document_ids' holds document ids, and nothing gives their "
                                                "texts: set hf_corpus"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="margin_mse", hf_queries=str(queries)))
    tuples = write_jsonl(tmp_path / "t.jsonl", [{"query": "apple story", "positive_id": "d1",
                                                  "negative_ids": ["d2", "d3"]}])
    with pytest.raises(TrainingDataError, match="column 'positive_id' holds document ids.*set hf_corpus"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(tuples)))


def test_scored_layout_needs_a_distillation_loss(tmp_path):
    rows = [{"query": f"{t} story", "documents": [doc(u) for u in TOPICS[i:i + 3]], "scores": [3.0, 2.0, 1.0]}
            for i, t in enumerate(TOPICS[:4])]
    path = write_parquet(tmp_path / "scored.parquet", rows)
    # told from the columns: refused when the rows are read
    with pytest.raises(TrainingDataError, match="scored.parquet: hf_layout scored makes the teacher's best document "
                                                "the positive, .*got loss: listwise; set loss: margin_mse"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="listwise"))
    # set in the options: refused when they are checked
    with pytest.raises(ConfigError, match="option 'hf_layout: scored' .*got loss: bce"):
        hf_options(tmp_path, hf_dataset=str(path), hf_layout="scored", loss="bce")
    assert load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="listwise_kl")).teacher is not None


def scored_tuple_rows():
    return [{k if k != "q" else "query": v for k, v in r.items()} for r in tuple_rows(scores=True)]


SCORE_COLUMNS = {"positive": "pos", "negatives": "negs", "positive_score": "ps", "negative_scores": "ns"}


@pytest.mark.parametrize("column,value", [("ps", None), ("ns", None)])
def test_distillation_needs_every_rows_scores(tmp_path, column, value):
    rows = scored_tuple_rows()
    rows[3][column] = value
    path = write_parquet(tmp_path / "t.parquet", rows)
    with pytest.raises(ValueError, match=f"hf_dataset .*t.parquet: row 3: no teacher score in column '{column}', "
                                         "which loss margin_mse needs on every row"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="margin_mse", hf_columns=SCORE_COLUMNS))
    # a loss that does not use the scores trains on the row
    data = load_training_data(hf_options(tmp_path, hf_dataset=str(path), hf_columns=SCORE_COLUMNS))
    assert data.description["groups_per_epoch"] == 8


def test_labeled_distillation_needs_every_rows_score(tmp_path):
    rows = [{"query": "apple story", "document": doc("apple"), "label": 1, "score": 5.0},
            {"query": "apple story", "document": doc("river"), "label": 0, "score": None},
            {"query": "apple story", "document": doc("tiger"), "label": 0, "score": 1.0}]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    with pytest.raises(ValueError, match="l.jsonl: row 1: no teacher score in column 'score', which loss listwise_kl "
                                         "needs on every row"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="listwise_kl", batch_size=1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("streaming", [False, True])
def test_scores_must_be_finite(tmp_path, bad, streaming):
    rows = scored_tuple_rows()
    rows[5]["ns"] = [1.0, bad, 0.0, 2.0]
    path = write_parquet(tmp_path / "t.parquet", rows)
    opts = hf_options(tmp_path, hf_dataset=str(path), loss="margin_mse", hf_columns=SCORE_COLUMNS,
                      streaming=streaming)
    match = "t.parquet: row 5: teacher scores must be finite, got .* \\(column 'ns'\\)"
    with pytest.raises(ValueError, match=match):
        data = load_training_data(opts)  # in memory: here, before any model
        assert streaming
        list(data.source.iter_epoch(0))  # streamed: at the row


def test_labeled_top_sampling_orders_negatives_by_the_score_column(tmp_path):
    rows = [{"query": "apple story", "document": doc("apple"), "label": 1, "score": 9.0},
            {"query": "apple story", "document": doc("river"), "label": 0, "score": 1.0},
            {"query": "apple story", "document": doc("tiger"), "label": 0, "score": 7.0},
            {"query": "apple story", "document": doc("ocean"), "label": 0, "score": 4.0}]
    path = write_jsonl(tmp_path / "l.jsonl", rows)
    data = load_training_data(hf_options(tmp_path, hf_dataset=str(path), sampling_strategy="top", batch_size=1))
    (group,) = data.source.iter_epoch(0)
    assert group.negs == (doc("tiger"), doc("ocean"))  # the two best-scored, not the first two rows
    unscored = write_jsonl(tmp_path / "u.jsonl", [{k: v for k, v in r.items() if k != "score"} for r in rows])
    with pytest.raises(TrainingDataError, match="u.jsonl: sampling_strategy: top takes each query's best-ranked "
                                                "negatives, and layout labeled ranks them only by a score column"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(unscored), sampling_strategy="top", batch_size=1))
    assert load_training_data(hf_options(tmp_path, hf_dataset=str(unscored), batch_size=1)).source  # random: fine


def bad_cells(kind):
    """Tuple rows whose column 'pos' or 'negs' holds what is not a text, from row 2 on."""
    rows = tuple_rows()
    for i, row in enumerate(rows):
        if kind == "dict positive":
            row["pos"] = {"text": row["pos"]} if i >= 2 else {"text": None}
        elif kind == "integer negatives":
            row["negs"] = list(range(4)) if i >= 2 else [None]
        elif kind == "float query":
            row["q"] = 1.5 if i >= 2 else None
    return rows


CELL_ERRORS = {"dict positive": "row 0: column 'pos' holds texts \\(strings\\), got \\{'text': None\\} \\(dict\\)",
               "integer negatives": "row 2: column 'negs' holds texts \\(strings\\), got 0 \\(int\\)",
               "float query": "row 2: column 'q' holds texts \\(strings\\), got 1.5 \\(float\\)"}
TUPLE_COLUMNS = {"query": "q", "positive": "pos", "negatives": "negs"}


@pytest.mark.parametrize("kind", CELL_ERRORS)
@pytest.mark.parametrize("streaming", [False, True])
def test_text_columns_must_hold_texts(tmp_path, kind, streaming):
    """A dict as the positive or integers as negatives were trained on as their str(): now one line naming the
    dataset, the first bad row and the column, before training (a stream: its first row, then at the row)."""
    path = write_parquet(tmp_path / "t.parquet", bad_cells(kind))
    opts = hf_options(tmp_path, hf_dataset=str(path), hf_columns=TUPLE_COLUMNS, streaming=streaming)
    with pytest.raises(ValueError, match=f"hf_dataset .*t.parquet: {CELL_ERRORS[kind]}$"):
        data = load_training_data(opts)
        assert streaming and kind != "dict positive"  # row 0 is checked when a stream is opened
        list(data.source.iter_epoch(0))


def test_id_columns_take_strings_or_integers(tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"document_id": i, "text": doc(t)}
                                                         for i, t in enumerate(TOPICS)])
    rows = [{"query": f"{t} story", "positive_id": i, "negative_ids": [(i + 1) % 16, (i + 2) % 16]}
            for i, t in enumerate(TOPICS[:4])]
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    data = load_training_data(hf_options(tmp_path, hf_dataset=str(path), hf_corpus=str(corpus)))
    g = next(g for g in data.source.iter_epoch(0) if g.qid == "apple story")
    assert g.pos == "0" and data.docs[g.pos] == doc("apple")
    rows[0]["negative_ids"], rows[1]["negative_ids"] = [], [2.5, 3.0]  # a float column (Arrow): row 1 is the first
    with pytest.raises(ValueError, match="ids.jsonl: row 1: column 'negative_ids' holds ids \\(strings or integers\\), "
                                         "got 2.5 \\(float\\)"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(write_jsonl(tmp_path / "ids.jsonl", rows)),
                                      hf_corpus=str(corpus)))


def test_scores_and_labels_must_be_numbers(tmp_path):
    rows = scored_tuple_rows()
    for row in rows:
        row["ps"] = str(row["ps"])
    path = write_parquet(tmp_path / "t.parquet", rows)
    with pytest.raises(ValueError, match="t.parquet: row 0: teacher scores must be numbers, got '10.0' "
                                         "\\(column 'ps'\\)"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(path), loss="margin_mse", hf_columns=SCORE_COLUMNS))
    labeled = [{"query": "apple story", "document": doc("apple"), "label": 1.0},
               {"query": "apple story", "document": doc("river"), "label": float("nan")}]
    with pytest.raises(ValueError, match="l.parquet: row 1: label must be a finite number, got nan "
                                         "\\(column 'label'\\)"):
        load_training_data(hf_options(tmp_path, hf_dataset=str(write_parquet(tmp_path / "l.parquet", labeled)),
                                      batch_size=1))
