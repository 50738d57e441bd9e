"""Plots produce real, decodable PNGs; bad inputs are errors."""

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from maw_reranker.evaluate.plots import plot_depth_usage, plot_query_deltas

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def depth_rows(n=30, depths=4, layers=("3", "11")):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        entry = {}
        for layer in layers:
            w = rng.dirichlet(np.ones(depths))
            entry[layer] = {"weights": w.round(4).tolist(), "selected": int(w.argmax())}
        rows.append({"qid": f"q{i % 5}", "docid": f"d{i}", "layers": entry})
    return rows


def assert_png(path, min_height=100):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_height and image.shape[1] >= 200
    assert image[..., :3].std() > 0.01  # not a blank canvas
    assert not list(path.parent.glob(".*.tmp"))  # no leftover temp file from the atomic write


def test_depth_usage_from_rows_and_jsonl(tmp_path):
    rows = depth_rows()
    out = plot_depth_usage(rows, tmp_path / "depth.png")
    assert_png(out, min_height=400)  # two layers -> two rows of panels
    log = tmp_path / "depth_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_png(plot_depth_usage(log, tmp_path / "sub" / "depth2.png"))


def test_depth_usage_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_depth_usage([], tmp_path / "x.png")
    rows = depth_rows(n=2)
    rows[1]["layers"]["3"]["weights"] = [0.5, 0.5]
    with pytest.raises(ValueError, match="different lengths"):
        plot_depth_usage(rows, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'layers'"):
        plot_depth_usage([{"qid": "q", "docid": "d"}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_query_deltas(tmp_path):
    rng = np.random.default_rng(1)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 80))}
    b = {q: min(1.0, v + float(rng.normal(0.03, 0.1))) for q, v in a.items()}
    out = plot_query_deltas(a, b, "nDCG@10", tmp_path / "deltas.png", label_a="bert", label_b="maw")
    assert_png(out)
    with pytest.raises(ValueError, match="only in candidate: q9"):
        plot_query_deltas({"q1": 0.1}, {"q1": 0.2, "q9": 0.3}, "RR@10", tmp_path / "bad.png")
