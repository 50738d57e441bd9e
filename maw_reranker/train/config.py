"""`TrainOptions`: every setting of `maw-rerank train`, from YAML configs (configs/training/*.yaml) and CLI flags.

Field types are read at runtime by the option parser (no ``from __future__ import annotations``); ``Literal`` fields
become validated choices. :meth:`TrainOptions.validate` checks what the parser cannot (cross-field rules) so a bad
config fails before a model is loaded.
"""

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from maw_reranker.config.files import ConfigError
from maw_reranker.config.maw_spec import AUTO, effective_maw, parse_maw
from maw_reranker.config.sections import (DatasetOptions, HFOptions, ModelOptions, NegativeOptions, PoolOptions,
                                          Precision,
                                          PrefixCacheOptions, opt, resolve_model_path)
from maw_reranker.maw.config import MAWConfig
from maw_reranker.train.losses import Loss


@dataclass
class TrainOptions(NegativeOptions, PrefixCacheOptions, PoolOptions, ModelOptions, HFOptions, DatasetOptions):
    CONFIG_KINDS = ("training",)
    RENAMED = {"negatives_run": "use 'candidates' (the TREC run to sample negatives from)",
               "mixed_precision": "use 'precision' with fp32 (was: no), bf16 or fp16",
               "n_negatives": "use 'num_negatives'", "neg_sampling": "use 'sampling_strategy'",
               "overwrite": "use 'force'", "progress_bar": "use 'progress'"}

    # -- model (also: model, maw, max_length from ModelOptions) --------------------------------------------------
    trainable: Literal["full", "top", "maw_only", "lora"] = opt(
        "full", "full = every parameter; top = the last top_layers encoder layers + MAW parameters + classification "
                "head (everything below frozen); maw_only = backbone frozen, MAW parameters + head; lora = peft LoRA "
                "adapters (on lora_layers) + MAW parameters + head (merged before saving)")
    lora_r: int = opt(8, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target_modules: Optional[list[str]] = opt(None, "module names to adapt; None = peft's default for the architecture")
    lora_layers: Literal["all", "top"] = opt("all", "encoder layers LoRA adapts: all, or the last top_layers")
    top_lora: bool = opt(False, "trainable: top, plus LoRA adapters (rank lora_r) on the same layers: the same "
                                "trainable layers with extra parameters, a control for MAW's parameter count")

    # -- training data (also: the DatasetOptions and PoolOptions sections) -----------------------------------------
    source: Literal["pool", "triples", "hf"] = opt(
        "pool", "pool = positives from qrels, hard negatives sampled from a candidate pool; triples = stream the "
                "dataset's official (query, positive, negative) docpairs (MS MARCO triples-small); hf = groups from "
                "a Hugging Face dataset or local parquet/jsonl/csv files (hf_dataset)")
    # (also: num_negatives, neg_rank_min/max, sampling_strategy, relevance_threshold, max_negative_grade,
    # missing_positives, max_queries from NegativeOptions, shared with mine-negatives)
    allow_missing_positives: bool = opt(True, "skip (with a warning) queries without a positive; false = error")
    streaming: bool = opt(False, "stream groups (run file / docpairs read lazily, bounded shuffle buffer) instead of "
                                "holding the pool in memory: for MS MARCO-size data; needs max_steps")
    shuffle_buffer: int = opt(10000, "streaming: groups held for shuffling")
    holdout_queries: int = opt(0, "hold this many training queries out of training as the dev set")
    # -- source: hf (Hugging Face datasets; docs/training.md "Hugging Face datasets") ---------------------------
    hf_dataset: Optional[str] = opt(None, "source: hf: a hub dataset id, optionally with its config as ID:CONFIG "
                                          "(e.g. lightonai/ms-marco-en-bge:train), or local .parquet/.jsonl/.json/"
                                          ".csv/.tsv file(s) (comma-separated) or a folder of them")
    # (also: hf_split, hf_layout, hf_columns, hf_queries, hf_corpus from HFOptions, shared with eval)
    # -- objective --------------------------------------------------------------------------------------------
    loss: Loss = opt("listwise", "ranking loss over each group")
    margin: float = opt(1.0, "margin of the margin loss")
    temperature: float = opt(1.0, "softmax temperature of the listwise and listwise_kl losses")
    # -- distillation (loss: margin_mse or listwise_kl) ----------------------------------------------------------
    teacher_run: Optional[str] = opt(None, "teacher scores from a TREC run (its score column): every training pair "
                                           "must be in it")
    teacher_model: Optional[str] = opt(None, "teacher cross-encoder (hub id or directory), run once over "
                                             "every training pair before training; its scores are cached in "
                                             "teacher_cache")
    teacher_max_length: Optional[int] = opt(None, "max tokens per pair for teacher_model (default: the teacher's "
                                                  "own, at most 512)")
    teacher_batch_size: int = opt(64, "pairs per scoring batch of teacher_model")
    teacher_cache: str = opt("cache/teacher", "folder of teacher_model scores: one subfolder per teacher (weights, "
                                              "tokenizer, max_length), one score per pair text; reused by later runs, "
                                              "and a killed fill resumes")
    router_oracle_weight: float = opt(0.0, "router: weight of the cross-entropy towards the oracle depth (0 = off)")
    oracle_every: int = opt(1, "router: compute the oracle depth every N steps (it costs depth_dim extra forwards)")
    grpo_group_size: int = opt(4, "grpo: depth choices G sampled per training group")
    grpo_beta: float = opt(0.01, "grpo: weight of KL(pi || uniform)")
    grpo_eta: float = opt(0.01, "grpo: weight of the entropy bonus")
    grpo_weight: float = opt(1.0, "grpo: weight of the policy loss added to the ranking loss")
    grpo_eps: float = opt(1e-6, "grpo: eps in (reward - mean) / (std + eps)")
    # -- optimisation -----------------------------------------------------------------------------------------
    lr: float = opt(2e-5, "learning rate of the backbone and head")
    maw_lr: Optional[float] = opt(1e-3, "learning rate of MAW parameters (gates, routers, depth projections); "
                                       "None = lr")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases, norms and MAW gate logits)")
    batch_size: int = opt(8, "groups per device per micro-step (pairs = batch_size * (1 + num_negatives))")
    grad_accum: int = opt(1, "gradient accumulation micro-steps per optimizer step")
    epochs: float = opt(1.0, "passes over the training groups (ignored when max_steps is set)")
    max_steps: Optional[int] = opt(None, "optimizer steps to run (overrides epochs)")
    scheduler: Literal["linear", "cosine", "constant"] = opt("linear", "decay after warmup")
    warmup_ratio: float = opt(0.1, "fraction of steps for linear warmup (ignored when warmup_steps > 0)")
    warmup_steps: int = opt(0, "warmup steps")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)")
    precision: Precision = opt("fp32", "fp32, or autocast to bf16/fp16 (Accelerate's mixed precision); logits and "
                                      "losses stay fp32")
    seed: int = opt(42, "seed of initialisation, data order, negatives, dropout and depth sampling")
    # -- output, checkpoints, logging -------------------------------------------------------------------------
    output_dir: str = opt("runs/train", "where checkpoints/, final/, best/, logs/ and metrics.jsonl go")
    checkpoint_every: int = opt(500, "save a resumable checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = opt(2, "keep the newest N checkpoints (0 = all)")
    resume: Optional[str] = opt(None, "continue from a checkpoint: 'latest' (newest in output_dir) or its path")
    force: bool = opt(False, "start fresh in an output_dir that already has checkpoints (the earlier run is kept "
                             "aside until the new one completes)")
    log_every: int = opt(10, "log averaged losses every N optimizer steps")
    report_to: list[str] = opt(["tensorboard"], "trackers: tensorboard and/or wandb (empty = none)",
                              choices=["tensorboard", "wandb"])
    progress: bool = opt(True, "show a progress bar (loss, learning rate, pairs/s)")
    # -- dev evaluation ---------------------------------------------------------------------------------------
    dev_dataset: Optional[str] = opt(None, "dev set for periodic evaluation (name or path); with holdout_queries "
                                          "the held-out training queries are used instead")
    dev_split: Optional[str] = opt(None, "split of the dev dataset")
    dev_queries: Optional[str] = opt(None, "queries file of a docs-file dev dataset (as 'queries' for training)")
    dev_qrels: Optional[str] = opt(None, "TREC qrels of a local dev dataset (as 'qrels' for training)")
    dev_run: Optional[str] = opt(None, "TREC run of dev candidates; None = the dev set's own or a BM25 pool")
    dev_depth: int = opt(100, "candidates reranked per dev query")
    dev_max_queries: Optional[int] = opt(None, "evaluate on this many dev queries (first by id)")
    dev_every: int = opt(0, "evaluate every N optimizer steps (0 = only at the end)")
    dev_measure: str = opt("nDCG@10", "ir_measures measure that selects the best checkpoint")
    dev_batch_size: int = opt(64, "pairs per scoring batch in dev evaluation")

    # -- derived -----------------------------------------------------------------------------------------------
    @property
    def maw_config(self) -> Optional[MAWConfig]:
        """The MAW settings training starts from (``auto`` resolved against the model directory when it exists)."""
        spec = parse_maw(self.maw)
        if spec != AUTO:
            return spec
        try:
            return effective_maw(spec, resolve_model_path(self.model))
        except (ValueError, FileNotFoundError):  # reported when the model is loaded, after the data checks
            return None

    @property
    def group_size(self) -> int:
        return 1 + self.num_negatives

    def validate(self) -> "TrainOptions":
        """Raise ConfigError (a ValueError) naming the option for any setting the parser cannot check on its own."""
        try:
            return self._validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate(self) -> "TrainOptions":
        if not str(self.model).strip():
            raise ValueError("option 'model' is empty; give a cross-encoder hub id or directory")
        if not str(self.output_dir).strip():
            raise ValueError("option 'output_dir' is empty")
        if not str(self.dataset).strip() and self.source != "hf":
            raise ValueError("option 'dataset' is empty; give the training dataset (name or path)")
        maw = self.maw_config
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "pool_k": self.pool_k, "grpo_group_size": self.grpo_group_size,
                    "oracle_every": self.oracle_every, "shuffle_buffer": self.shuffle_buffer,
                    "lora_r": self.lora_r, "log_every": self.log_every, "dev_depth": self.dev_depth,
                    "dev_batch_size": self.dev_batch_size, "teacher_batch_size": self.teacher_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"option '{name}' must be >= 1, got {value}")
        for name in ("lr", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"option '{name}' must be > 0, got {getattr(self, name)}")
        if self.maw_lr is not None and self.maw_lr <= 0:
            raise ValueError(f"option 'maw_lr' must be > 0 or null, got {self.maw_lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"option 'max_steps' must be >= 1 or null, got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError(f"option 'epochs' must be > 0 (or set max_steps), got {self.epochs}")
        if self.streaming and self.max_steps is None:
            raise ValueError("option 'streaming' needs 'max_steps': a stream's length is not known in advance")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"option 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "dev_every", "holdout_queries",
                     "max_grad_norm", "weight_decay", "router_oracle_weight", "grpo_beta", "grpo_eta", "grpo_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"option '{name}' must be >= 0, got {getattr(self, name)}")
        if self.grpo_eps <= 0:
            raise ValueError(f"option 'grpo_eps' must be > 0, got {self.grpo_eps}")
        mode = maw.gating_mode if maw is not None else None
        if self.router_oracle_weight > 0 and mode != "router":
            raise ValueError(f"option 'router_oracle_weight' applies to maw.gating_mode 'router' only (got {mode!r})")
        if self.trainable == "maw_only" and maw is None:
            raise ValueError("option 'trainable: maw_only' needs a MAW variant (option 'maw'); with no MAW only the "
                             "head would train")
        if self.prefix_cache and not (self.trainable in ("top", "maw_only")
                                      or (self.trainable == "lora" and self.lora_layers == "top")):
            raise ValueError(f"option 'prefix_cache' needs a frozen prefix: trainable top or maw_only, or lora with "
                             f"lora_layers: top (got trainable: {self.trainable}, lora_layers: {self.lora_layers})")
        if self.top_lora and self.trainable != "top":
            raise ValueError(f"option 'top_lora' adds LoRA to trainable: top (got trainable: {self.trainable})")
        if self.source == "triples" and self.num_negatives != 1:
            raise ValueError("option 'source: triples' gives one negative per group; set num_negatives: 1 (or use "
                             "source: pool for more negatives per group)")
        if self.source != "pool" and self.holdout_queries:
            raise ValueError("option 'holdout_queries' needs source: pool")
        self._validate_hf()
        self._validate_teacher()
        if self.dev_dataset and self.holdout_queries:
            raise ValueError("give either 'dev_dataset' or 'holdout_queries' as the dev set, not both")
        if self.resume is not None and self.force:
            raise ValueError("options 'resume' and 'force' contradict each other")
        from maw_reranker.data.measures import check_measures

        check_measures([self.dev_measure], "dev_measure")
        return self

    def _validate_hf(self) -> None:
        if self.source != "hf":
            # The hf_* options also read a dataset hf:SPEC (data/hf_eval.py); hf_dataset is source: hf's own.
            hf_dataset = str(self.dataset).strip().startswith("hf:")
            given = (["hf_dataset"] if self.hf_dataset else []) + ([] if hf_dataset else self.hf_options_given())
            if given:
                raise ValueError(f"option '{given[0]}' applies to source: hf (or, but for hf_dataset, to a dataset "
                                 f"hf:SPEC); got source: {self.source}")
            return
        if not self.hf_dataset or not str(self.hf_dataset).strip():
            raise ValueError("option 'source: hf' needs 'hf_dataset' (a hub dataset id or local parquet/jsonl/csv "
                             "files)")
        if self.max_queries is not None:
            raise ValueError("option 'max_queries' needs source: pool or triples (select rows of an hf dataset with "
                             "its files or split)")
        from maw_reranker.data.hf import check_roles
        from maw_reranker.train.losses import DISTILLATION_LOSSES

        check_roles(self.hf_columns, "hf_columns")
        if self.hf_layout == "scored" and self.loss not in DISTILLATION_LOSSES:
            raise ValueError(f"option 'hf_layout: scored' makes the teacher's best document the positive, a target "
                             f"only the distillation losses ({', '.join(DISTILLATION_LOSSES)}) train on; got loss: "
                             f"{self.loss}")
        scores = [r for r in ("scores", "score", "positive_score", "negative_scores") if r in self.hf_columns]
        teacher = next((n for n in ("teacher_run", "teacher_model") if getattr(self, n)), None)
        if scores and teacher:
            raise ValueError(f"option '{teacher}' and hf_columns {scores[0]} (a score column) both give teacher "
                             f"scores; teacher scores come from exactly one place: leave out one of them")

    def _validate_teacher(self) -> None:
        from maw_reranker.config.sections import MIN_LENGTH
        from maw_reranker.train.losses import DISTILLATION_LOSSES

        distill = self.loss in DISTILLATION_LOSSES
        teachers = [n for n in ("teacher_run", "teacher_model") if getattr(self, n)]
        if len(teachers) > 1:
            raise ValueError("give one teacher: option 'teacher_run' or 'teacher_model', not both")
        if teachers and not distill:
            raise ValueError(f"option '{teachers[0]}' gives teacher scores, which only the distillation losses use "
                             f"({', '.join(DISTILLATION_LOSSES)}); got loss: {self.loss}")
        if distill and not teachers and self.source != "hf":
            raise ValueError(f"option 'loss: {self.loss}' needs teacher scores: set 'teacher_run' (a TREC run with "
                             "scores) or 'teacher_model' (a cross-encoder scored once and cached), or use source: hf "
                             "with a score column")
        if self.teacher_model and (self.streaming or self.source == "triples"):
            raise ValueError("option 'teacher_model' scores every training pair before training, which a stream "
                             "cannot list; use streaming: false (source: pool or hf), or a teacher_run")
        if self.teacher_run:
            from pathlib import Path

            if not Path(self.teacher_run).is_file():
                raise ValueError(f"option 'teacher_run': file not found: {self.teacher_run}")
        if self.teacher_max_length is not None and self.teacher_max_length < MIN_LENGTH:
            raise ValueError(f"option 'teacher_max_length' must be >= {MIN_LENGTH} or null, got "
                             f"{self.teacher_max_length}")
        if not str(self.teacher_cache).strip():
            raise ValueError("option 'teacher_cache' is empty")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def accelerate_precision(self) -> str:
        """Accelerate's name of ``precision`` ("no" for fp32)."""
        return "no" if self.precision == "fp32" else self.precision
