"""Per-run artifacts under ``experiments/<dataset>/<variant>/seed_<n>/`` and the metadata that makes a run reproducible.

Every file is written atomically. A completion marker is written last (``mark_complete``) and removed by any
later write, so ``is_complete()`` is true only for a run whose files were all written after its last start:
suites skip finished runs and redo interrupted ones.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Iterable, Mapping

from maw_reranker.data.trec import write_run as _write_trec_run
from maw_reranker.utils.io import atomic_write, write_json, write_jsonl
from maw_reranker.utils.provenance import run_metadata

COMPLETE_MARKER = "_COMPLETE.json"
SCORE_COLUMNS = ("qid", "docid", "score", "first_stage_rank", "first_stage_score")


class RunArtifacts:
    """Writer for one run's folder; file names are attributes so readers (summary, CLI) agree with writers."""

    CONFIG = "config.json"
    RUN = "run.trec"
    METRICS = "metrics.json"
    PER_QUERY = "per_query.json"
    EVAL_INFO = "eval_info.json"
    SCORES = "scores.tsv"
    DEPTH_LOG = "depth_log.jsonl"

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

    @classmethod
    def for_run(cls, root: str | Path, dataset: str, variant: str, seed: int | str) -> "RunArtifacts":
        for part, value in (("dataset", dataset), ("variant", variant), ("seed", str(seed))):
            if not value or "/" in value or "\\" in value or value in (".", ".."):
                raise ValueError(f"{part} {value!r} cannot be used as a folder name")
        return cls(Path(root) / dataset / variant / f"seed_{seed}")

    def path(self, name: str) -> Path:
        return self.output_dir / name

    def _begin_write(self) -> None:
        # Any new content makes an earlier completion marker stale.
        self.path(COMPLETE_MARKER).unlink(missing_ok=True)

    def write_config(self, config: Mapping, with_metadata: bool = True) -> Path:
        self._begin_write()
        data = run_metadata(config) if with_metadata else {"config": dict(config)}
        write_json(self.path(self.CONFIG), data)
        return self.path(self.CONFIG)

    def write_run(self, run: Mapping[str, Mapping[str, float]], tag: str = "maw") -> Path:
        self._begin_write()
        _write_trec_run(self.path(self.RUN), run, tag=tag)
        return self.path(self.RUN)

    def write_metrics(self, result) -> tuple[Path, Path]:
        """metrics.json ({measure: value}), per_query.json ({measure: {qid: value}}) and eval_info.json (coverage)."""
        self._begin_write()
        write_json(self.path(self.METRICS), dict(result.aggregate))
        write_json(self.path(self.PER_QUERY), {m: dict(v) for m, v in result.per_query.items()})
        info = {k: getattr(result, k) for k in ("n_queries", "skipped_unjudged", "missing_from_run", "missing_queries")
                if hasattr(result, k)}
        write_json(self.path(self.EVAL_INFO), info)
        return self.path(self.METRICS), self.path(self.PER_QUERY)

    def write_scores(self, rows: Iterable[Mapping | tuple]) -> Path:
        """Per-pair scores as TSV with a header: qid, docid, score, first_stage_rank, first_stage_score.

        Rows are dicts with those keys (first-stage fields optional) or tuples in that column order.
        """
        self._begin_write()
        with atomic_write(self.path(self.SCORES)) as handle:
            handle.write("\t".join(SCORE_COLUMNS) + "\n")
            for i, row in enumerate(rows):
                values = [row.get(c) for c in SCORE_COLUMNS] if isinstance(row, Mapping) else list(row) + [None] * (5 - len(row))
                if len(values) != 5 or values[0] is None or values[1] is None or values[2] is None:
                    raise ValueError(f"score row {i} needs qid, docid and score: {row!r}")
                cells = ["" if v is None else str(v) for v in values]  # str(float): shortest exact repr
                if any(ch in cell for cell in cells for ch in "\t\n\r"):
                    raise ValueError(f"score row {i} has a tab or newline in a field: {row!r}")
                handle.write("\t".join(cells) + "\n")
        return self.path(self.SCORES)

    def write_depth_log(self, rows: Iterable[Mapping]) -> Path:
        """MAW depth log as JSONL: one row per (query, doc) with per-layer depth weights and selected depth."""
        self._begin_write()
        write_jsonl(self.path(self.DEPTH_LOG), rows)
        return self.path(self.DEPTH_LOG)

    def mark_complete(self, extra: Mapping | None = None) -> Path:
        """Write the completion marker; call it last, after every other artifact."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        files = sorted(p.name for p in self.output_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        data = {"completed_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "files": [f for f in files if f != COMPLETE_MARKER], **(dict(extra) if extra else {})}
        write_json(self.path(COMPLETE_MARKER), data)
        return self.path(COMPLETE_MARKER)

    def is_complete(self) -> bool:
        return self.path(COMPLETE_MARKER).is_file()
