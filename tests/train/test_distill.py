"""Distillation: MarginMSE and listwise KL against hand-computed values, their gradients, the options' checks, and
short trainings with teacher scores from a TREC run and from a teacher model (cached, then reused)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from maw_reranker.config.files import ConfigError
from maw_reranker.train.losses import DISTILLATION_LOSSES, LOSSES, get_loss, listwise_kl, margin_mse
from tests.train.helpers import options, tiny_model_dir, write_task

SCORES = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, -1.0]])
TEACHER = torch.tensor([[1.0, 0.0, 0.0], [3.0, 1.0, 2.0]])


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_registered_like_the_other_losses():
    assert set(DISTILLATION_LOSSES) <= set(LOSSES)


def test_margin_mse_value():
    # student margins (2, 1) and (-1, 1); teacher margins (1, 1) and (2, 1)
    expected = [((2 - 1) ** 2 + 0) / 2, ((-1 - 2) ** 2 + 0) / 2]
    assert torch.allclose(margin_mse(SCORES, TEACHER), torch.tensor(expected))
    # only margins count: shifting either side changes nothing
    assert torch.allclose(margin_mse(SCORES + 5, TEACHER - 3), margin_mse(SCORES, TEACHER))
    assert torch.allclose(margin_mse(TEACHER, TEACHER), torch.zeros(2))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_listwise_kl_value(temperature):
    expected = []
    for s, t in zip(SCORES.tolist(), TEACHER.tolist()):
        p = _softmax([x / temperature for x in t])
        q = _softmax([x / temperature for x in s])
        expected.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    assert torch.allclose(listwise_kl(SCORES, TEACHER, temperature), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(listwise_kl(SCORES + 4, TEACHER - 1, temperature), listwise_kl(SCORES, TEACHER, temperature),
                          atol=1e-6)
    assert torch.allclose(listwise_kl(TEACHER, TEACHER, temperature), torch.zeros(2), atol=1e-7)


@pytest.mark.parametrize("name", DISTILLATION_LOSSES)
def test_gradient_moves_student_towards_teacher(name):
    # the teacher puts the positive far above the negative, the student below it: the positive's score must rise
    # and the negative's fall under gradient descent
    scores = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = get_loss(name, teacher=torch.tensor([[3.0, 0.0]]))(scores).sum()
    loss.backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 1]
    # already at the teacher's margin: no gradient
    at = torch.tensor([[3.0, 0.0]], requires_grad=True)
    get_loss(name, teacher=torch.tensor([[3.0, 0.0]]))(at).sum().backward()
    assert torch.allclose(at.grad, torch.zeros(1, 2), atol=1e-7)


def test_distillation_loss_needs_teacher_tensor():
    with pytest.raises(ValueError, match="needs teacher scores"):
        get_loss("margin_mse")
    with pytest.raises(ValueError, match="do not match"):
        margin_mse(SCORES, TEACHER[:, :2])


# -- options ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("teacher"), seed=1)


@pytest.mark.parametrize("overrides,message", [
    ({"loss": "margin_mse"}, "option 'loss: margin_mse' needs teacher scores"),
    ({"loss": "listwise", "teacher_run": "RUN"}, "option 'teacher_run' gives teacher scores"),
    ({"loss": "listwise_kl", "teacher_run": "RUN", "teacher_model": "MODEL"}, "give one teacher"),
    ({"loss": "listwise_kl", "teacher_model": "MODEL", "streaming": True}, "option 'teacher_model' scores every"),
    ({"loss": "listwise_kl", "teacher_run": "/nonexistent.run"}, "option 'teacher_run': file not found"),
    ({"loss": "listwise_kl", "teacher_model": "MODEL", "teacher_batch_size": 0}, "option 'teacher_batch_size'"),
    ({"loss": "listwise_kl", "teacher_model": "MODEL", "teacher_max_length": 2}, "option 'teacher_max_length'"),
])
def test_options_are_checked(tmp_path, task, student, teacher_dir, overrides, message):
    overrides = {k: (str(task["run"]) if v == "RUN" else str(teacher_dir) if v == "MODEL" else v)
                 for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=message):
        options(tmp_path, task, student, **overrides).validate()


def test_options_from_the_command_line_parser(tmp_path, task, student):
    from maw_reranker.config.parser import parse_options
    from maw_reranker.train.config import TrainOptions

    opts = parse_options(TrainOptions, {"model": str(student), "dataset": str(task["dataset"]), "loss": "margin_mse",
                                        "teacher_run": str(task["run"]), "teacher_batch_size": "8"})
    assert (opts.loss, opts.teacher_batch_size) == ("margin_mse", 8)
    with pytest.raises(ConfigError, match="allowed values"):
        parse_options(TrainOptions, {"loss": "kl"})


# -- training ----------------------------------------------------------------------------------------------------------
def _config(out) -> dict:
    return json.loads((out / "train_config.json").read_text())


@pytest.mark.parametrize("loss", DISTILLATION_LOSSES)
def test_two_steps_with_teacher_run(tmp_path, task, student, loss):
    from maw_reranker.train import train

    result = train(options(tmp_path, task, student, loss=loss, teacher_run=str(task["run"]), max_steps=2))
    assert result.steps == 2
    losses = [row["loss/rank"] for row in result.history]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    assert _config(tmp_path / "out")["data"]["teacher"]["source"] == "teacher_run"


def test_teacher_run_missing_pair_fails_before_the_model_loads(tmp_path, task, student, monkeypatch):
    from maw_reranker.train import train, trainer
    from maw_reranker.train.sources import TrainingDataError

    def no_load(*args, **kwargs):
        raise AssertionError("the student was loaded before the teacher scores were checked")

    monkeypatch.setattr(trainer, "load_encoder", no_load)

    lines = task["run"].read_text().splitlines()
    dropped = next(line for line in lines if line.startswith("q3 "))
    partial = tmp_path / "partial.run"
    partial.write_text("\n".join(line for line in lines if line != dropped) + "\n")
    qid, _, docid = dropped.split()[:3]
    with pytest.raises(TrainingDataError, match=f"1 training pairs have no teacher score.*{qid}/{docid}"):
        train(options(tmp_path, task, student, loss="margin_mse", teacher_run=str(partial)))


def test_group_scores_name_a_pair_without_score():
    from maw_reranker.train.data import Group
    from maw_reranker.train.teacher import TeacherScoreError, TeacherScores

    teacher = TeacherScores({"q1": {"a": 1.0, "b": 0.5}}, "teacher_run x.run")
    assert teacher.group_scores([Group("q1", "a", ("b",))]).tolist() == [[1.0, 0.5]]
    assert teacher.group_scores([Group("q9", "x", ("y",), teacher=(2.0, 1.0))]).tolist() == [[2.0, 1.0]]
    with pytest.raises(TeacherScoreError, match="no teacher score for query 'q1', document 'c' in teacher_run x.run"):
        teacher.group_scores([Group("q1", "a", ("c",))])


def test_teacher_model_scores_once_and_the_cache_is_reused(tmp_path, task, student, teacher_dir):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.train import train

    cache = tmp_path / "teacher-cache"
    common = dict(loss="listwise_kl", teacher_model=str(teacher_dir), teacher_cache=str(cache), max_steps=2,
                  teacher_batch_size=16)
    first = train(options(tmp_path, task, student, **common))
    info = _config(tmp_path / "out")["data"]["teacher"]
    assert first.steps == 2 and info["source"] == "teacher_model"
    # every pair of the pool source: 12 queries x (their positive + every other candidate)
    assert info["pairs"] == info["scored"] > 0 and info["cached_before"] == 0
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "meta.json").is_file()
    shards = sorted(folders[0].glob("scores-*.npz"))
    assert shards and not list(folders[0].glob(".*.tmp"))

    # the cached scores are the teacher's own scores of the pairs' texts
    from maw_reranker.train.teacher import TeacherCache

    encoder = CrossEncoderWithMAW.from_pretrained(str(teacher_dir))
    reopened = TeacherCache(cache, encoder)
    assert len(reopened) == info["pairs"]
    pairs = [("apple story", "apple the of apples"), ("river story", "a river some story")]
    expected = encoder.predict(pairs)
    got = reopened.score(pairs)
    assert reopened.scored == 2 and np.allclose(got, expected, atol=1e-5)

    second_out = tmp_path / "second"
    second = train(options(tmp_path, task, student, output_dir=str(second_out), seed=1, **common))
    info2 = _config(second_out)["data"]["teacher"]
    assert second.steps == 2 and info2["scored"] == 0 and info2["pairs"] == info["pairs"]


def test_teacher_cache_refuses_another_teachers_folder(tmp_path, teacher_dir, student):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.train.teacher import TeacherCache

    teacher = CrossEncoderWithMAW.from_pretrained(str(teacher_dir))
    cache = TeacherCache(tmp_path, teacher)
    meta = json.loads((cache.path / "meta.json").read_text())
    meta["fingerprint"] = "0" * 64
    (cache.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds scores of another teacher"):
        TeacherCache(tmp_path, teacher)
    # another max_length is another folder
    shorter = CrossEncoderWithMAW.from_pretrained(str(teacher_dir), max_length=16)
    assert TeacherCache(tmp_path, shorter).path != cache.path


def test_teacher_cache_resumes_after_a_kill(tmp_path, teacher_dir, monkeypatch):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.train import teacher as teacher_module

    encoder = CrossEncoderWithMAW.from_pretrained(str(teacher_dir))
    monkeypatch.setattr(teacher_module, "CHUNK_PAIRS", 3)
    pairs = [(f"apple story {i}", "river the of") for i in range(7)]
    cache = teacher_module.TeacherCache(tmp_path, encoder)
    calls = {"n": 0}
    real = cache._write_shard

    def write_then_die(keys, values):
        real(keys, values)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    cache._write_shard = write_then_die
    with pytest.raises(KeyboardInterrupt):
        cache.score(pairs)
    again = teacher_module.TeacherCache(tmp_path, encoder)
    assert len(again) == 6  # two complete shards of 3
    scores = again.score(pairs)
    assert again.scored == 1 and np.allclose(scores, encoder.predict(pairs), atol=1e-5)


@pytest.mark.parametrize("loss", DISTILLATION_LOSSES)
def test_two_steps_with_teacher_scores_from_a_column(tmp_path, student, loss):
    import datasets

    from maw_reranker.train import train
    from maw_reranker.train.config import TrainOptions
    from tests.train.helpers import TOPICS

    rows = [{"query": f"{t} story", "documents": [f"{u} the {u}s" for u in TOPICS[i:i + 4]],
             "scores": [5.0, 1.0, 0.5, -2.0]} for i, t in enumerate(TOPICS[:8])]
    path = tmp_path / "scored.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    opts = TrainOptions(model=str(student), source="hf", hf_dataset=str(path), loss=loss, num_negatives=3, batch_size=2,
                        max_steps=2, output_dir=str(tmp_path / "out"), report_to=[], progress=False,
                        checkpoint_every=0, max_length=32)
    result = train(opts)
    assert result.steps == 2 and all(math.isfinite(r["loss/rank"]) for r in result.history)
    info = _config(tmp_path / "out")["data"]["teacher"]
    assert info["source"] == "hf column" and info["columns"] == ["scores"]


def test_teacher_model_over_an_hf_source(tmp_path, student, teacher_dir):
    import datasets

    from maw_reranker.train import train
    from maw_reranker.train.config import TrainOptions
    from tests.train.helpers import TOPICS

    rows = [{"query": f"{t} story", "positive": f"{t} the {t}s", "negatives": [f"{u} of" for u in TOPICS[i + 1:i + 3]]}
            for i, t in enumerate(TOPICS[:6])]
    path = tmp_path / "tuples.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    opts = TrainOptions(model=str(student), source="hf", hf_dataset=str(path), loss="margin_mse", num_negatives=2,
                        batch_size=2, max_steps=2, output_dir=str(tmp_path / "out"), report_to=[], progress=False,
                        checkpoint_every=0, max_length=32, teacher_model=str(teacher_dir),
                        teacher_cache=str(tmp_path / "cache"))
    assert train(opts).steps == 2
    assert _config(tmp_path / "out")["data"]["teacher"]["pairs"] == 6 * 3


def test_packaged_distillation_recipe_parses():
    from maw_reranker.config.files import CONFIGS_DIR
    from maw_reranker.config.parser import parse_options
    from maw_reranker.data.hf import parse_source
    from maw_reranker.train.config import TrainOptions

    opts = parse_options(TrainOptions, {}, [str(CONFIGS_DIR / "training" / "msmarco_distill.yaml")]).validate()
    assert (opts.source, opts.loss, opts.hf_layout, opts.streaming) == ("hf", "listwise_kl", "scored", True)
    source = parse_source(opts.hf_dataset)
    assert (source.path, source.name, source.local) == ("lightonai/ms-marco-en-bge", "train", False)
    assert opts.hf_columns["scores"] == "scores" and opts.dataset == "MSMARCO/train"


@pytest.mark.parametrize("maw", [{"gating_mode": "router", "depth_dim": 2}, {"gating_mode": "grpo", "depth_dim": 2}])
def test_distillation_with_the_router_oracle_and_grpo(tmp_path, task, student, maw):
    from maw_reranker.train import train

    extra = {"router_oracle_weight": 0.5} if maw["gating_mode"] == "router" else {"grpo_group_size": 2}
    result = train(options(tmp_path, task, student, loss="margin_mse", teacher_run=str(task["run"]), max_steps=2,
                           maw=maw, **extra))
    assert result.steps == 2 and all(math.isfinite(r["loss"]) for r in result.history)


# -- one teacher at a time; the cache keeps precisions apart --------------------------------------------------------
def _scored_tuples(path, **extra):
    import datasets

    from tests.train.helpers import TOPICS

    rows = [{"query": f"{t} story", "positive": f"{t} the {t}s", "negatives": [f"{u} of" for u in TOPICS[i + 1:i + 3]],
             "positive_score": 5.0, "negative_scores": [1.0, 0.0], **extra} for i, t in enumerate(TOPICS[:6])]
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("option", ["teacher_run", "teacher_model"])
def test_a_teacher_option_and_score_columns_are_refused(tmp_path, task, student, teacher_dir, monkeypatch, option):
    """Teacher scores come from exactly one place: a teacher option with an hf source's score columns is an error
    naming both, before the student loads (the columns were silently preferred)."""
    from maw_reranker.train import train, trainer
    from maw_reranker.train.config import TrainOptions
    from maw_reranker.train.sources import TrainingDataError

    def no_load(*args, **kwargs):
        raise AssertionError("the student was loaded before the teacher was checked")

    monkeypatch.setattr(trainer, "load_encoder", no_load)
    path = _scored_tuples(tmp_path / "tuples.parquet")
    value = str(task["run"]) if option == "teacher_run" else str(teacher_dir)
    opts = TrainOptions(model=str(student), source="hf", hf_dataset=str(path), loss="margin_mse", num_negatives=2,
                        batch_size=2, max_steps=2, output_dir=str(tmp_path / "out"), report_to=[], progress=False,
                        checkpoint_every=0, max_length=32, teacher_cache=str(tmp_path / "cache"), **{option: value})
    with pytest.raises(TrainingDataError, match=f"tuples.parquet: option '{option}' and the score columns "
                                                "'positive_score', 'negative_scores' both give teacher scores"):
        train(opts)
    assert not (tmp_path / "cache").exists()  # nothing scored
    # mapped in hf_columns: refused when the options are checked
    with pytest.raises(ConfigError, match=f"option '{option}' and hf_columns scores .a score column. both give"):
        TrainOptions(model=str(student), source="hf", hf_dataset=str(path), loss="listwise_kl",
                     hf_columns={"scores": "s"}, **{option: value}).validate()


def test_load_teacher_refuses_a_second_teacher(task):
    from types import SimpleNamespace

    from maw_reranker.train.sources import TrainingDataError
    from maw_reranker.train.teacher import TeacherScores, load_teacher

    data = SimpleNamespace(teacher=TeacherScores({}, "score column 'scores' of hf_dataset x.parquet"))
    opts = SimpleNamespace(loss="listwise_kl", teacher_run=str(task["run"]), teacher_model=None)
    with pytest.raises(TrainingDataError, match="option 'teacher_run' and the score column 'scores' of hf_dataset "
                                                "x.parquet both give teacher scores"):
        load_teacher(opts, data)


def test_teacher_cache_keeps_precisions_apart(tmp_path, teacher_dir):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW
    from maw_reranker.train.teacher import TeacherCache, teacher_fingerprint

    teacher = CrossEncoderWithMAW.from_pretrained(str(teacher_dir))
    prints = {p: teacher_fingerprint(teacher, p) for p in ("fp32", "bf16", "fp16")}
    assert len(set(prints.values())) == 3 and teacher_fingerprint(teacher) == prints["fp32"]
    caches = {p: TeacherCache(tmp_path, teacher, precision=p) for p in ("fp32", "bf16")}
    assert caches["fp32"].path != caches["bf16"].path
    assert caches["bf16"].path.name.startswith("bert-L") and "-bf16-" in caches["bf16"].path.name
    assert json.loads((caches["bf16"].path / "meta.json").read_text())["precision"] == "bf16"
    pairs = [("apple story", "apple the of apples")]
    caches["fp32"].score(pairs)
    assert len(TeacherCache(tmp_path, teacher, precision="bf16")) == 0  # fp32 scores are not bf16 scores
    assert len(TeacherCache(tmp_path, teacher)) == 1
    with pytest.raises(ValueError, match="holds fp32 scores; bf16 scores go to their own folder"):
        caches["fp32"].score(pairs, precision="bf16")
    with pytest.raises(ValueError, match="option 'precision'"):
        TeacherCache(tmp_path, teacher, precision="int8")
