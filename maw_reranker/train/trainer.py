"""The training loop: a thin Accelerate loop over training groups.

Accelerate owns devices, processes (``accelerate launch``), mixed precision, gradient accumulation and the
checkpoint format; this module owns the data position, the objective, logging, dev evaluation and saving.
Data sharding is done here rather than by a prepared DataLoader: every process builds the same global batch
(a pure function of seed, epoch and position) and takes its slice, which keeps ``--resume`` exact.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from maw_reranker.train.checkpoints import (TrainerState, complete_checkpoints, load_checkpoint, resolve_resume,
                                            save_checkpoint, truncate_metrics)
from maw_reranker.train.config import TrainOptions
from maw_reranker.train.data import GroupCollator, iter_batches
from maw_reranker.train.dev import evaluate_dev
from maw_reranker.train.objective import Objective
from maw_reranker.train.params import make_optimizer, select_trainable
from maw_reranker.config.sections import resolve_model_path
from maw_reranker.cross_encoder.checks import check_model_dir
from maw_reranker.cross_encoder.prefix import top_layer_indices, top_start, train_top
from maw_reranker.cross_encoder.top import CachedScorer, TopModel, cached_features
from maw_reranker.utils.io import disk_full_names, remove_path
from maw_reranker.utils.progress import progress_bar
from maw_reranker.train.sources import TrainingData, load_training_data
from maw_reranker.train.teacher import load_teacher

log = logging.getLogger(__name__)
PREVIOUS = ".previous"  # an overwritten run's outputs, kept until the new one completes
RUN_OUTPUTS = ("checkpoints", "final", "best", "metrics.jsonl", "best.json", "train_summary.json", "train_config.json",
               "logs")
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass
class TrainResult:
    output_dir: Path
    final_model: Path
    steps: int
    history: list[dict] = field(default_factory=list)  # one row per optimizer step run in this session
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    pairs_per_second: float = 0.0
    train_seconds: float = 0.0
    parameters: dict = field(default_factory=dict)  # total / trainable / maw / lora parameter counts


def build_accelerator(opts: TrainOptions):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    trackers = list(opts.report_to or [])
    if "wandb" in trackers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("option 'report_to' includes wandb but it is not installed (pip install "
                             "'maw-reranker[wandb]')") from None
    # Router/grpo steps and frozen regimes can leave parameters without gradient in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=opts.maw_config is not None or opts.trainable != "full")
    # Accelerate keeps one process-wide state; a second training in the same process (the demo, a notebook,
    # the tests) may ask for another precision. The distributed part (PartialState) is kept.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    try:
        return Accelerator(mixed_precision=opts.accelerate_precision, gradient_accumulation_steps=opts.grad_accum,
                           log_with=trackers or None, kwargs_handlers=[ddp],
                           project_config=ProjectConfiguration(project_dir=opts.output_dir,
                                                               logging_dir=str(Path(opts.output_dir) / "logs")))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"option 'precision: {opts.precision}': {exc}") from None


def load_encoder(opts: TrainOptions, device):
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW

    encoder = CrossEncoderWithMAW.from_pretrained(resolve_model_path(opts.model), maw=opts.maw_spec,
                                                  max_length=opts.max_length, device=device,
                                                  fresh_maw=opts.fresh_maw)
    if opts.trainable == "lora" or opts.top_lora:
        from maw_reranker.train.lora import add_lora

        top = opts.lora_layers == "top" or opts.top_lora
        layers = top_layer_indices(encoder.model, opts.top_layers) if top else None
        try:
            add_lora(encoder, opts.lora_r, opts.lora_alpha, opts.lora_dropout, opts.lora_target_modules, layers=layers)
        except ValueError as exc:  # peft: "Target modules ... not found in the base model"
            raise ValueError(f"option 'lora_target_modules' ({opts.lora_target_modules}): {exc}") from None
    return encoder


def total_steps(opts: TrainOptions, data: TrainingData, global_batch: int) -> int:
    if opts.max_steps is not None:
        return opts.max_steps
    per_epoch = len(data.source) // global_batch // opts.grad_accum
    if per_epoch < 1:
        raise ValueError(f"{len(data.source)} training groups make less than one optimizer step (batch_size "
                         f"{opts.batch_size} x processes x grad_accum {opts.grad_accum}); lower them or add data")
    return max(1, int(math.floor(per_epoch * opts.epochs)))


def save_model(encoder, directory: Path, card=None) -> Path:
    """``save_pretrained`` of the model as trained (with its model card, ``card``: a CardInfo of the run); LoRA
    adapters are merged into a copy first."""
    from maw_reranker.train.lora import has_lora, merged_copy

    target = merged_copy(encoder) if has_lora(encoder.model) else encoder
    return target.save_pretrained(directory, card=card)


def _flat_config(opts: TrainOptions) -> dict:
    # TensorBoard's hparams accept scalars only.
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in opts.to_dict().items()}


class Trainer:
    def __init__(self, opts: TrainOptions, callbacks: Optional[list[Callable]] = None):
        self.opts = opts.validate()
        self.callbacks = list(callbacks or [])
        self.out = Path(opts.output_dir)

    # -- setup ----------------------------------------------------------------------------------------------
    def _check_output(self) -> Optional[Path]:
        """The checkpoint to resume from, or None; refuses to start over silently. Nothing is deleted here."""
        from maw_reranker.utils.io import check_writable

        opts = self.opts
        check_writable(self.out, "output_dir")
        if opts.resume:
            return resolve_resume(opts.resume, self.out)
        existing = complete_checkpoints(self.out)
        if existing and not opts.force:
            raise ValueError(f"{self.out} already has checkpoints ({existing[-1].name}); continue with --resume "
                             "latest, or start over with --force")
        return None

    def _clear_previous(self) -> None:
        """``force``: once data and model have passed every check, the earlier run's outputs move aside into
        ``<output_dir>/.previous/`` (so no stale final model or summary sits beside the new run), and are deleted
        only when the new training completes: an interrupted or failed start-over loses nothing."""
        if not (self.opts.force and not self.opts.resume and self.accelerator.is_main_process):
            return
        aside = self.out / PREVIOUS
        earlier = [self.out / name for name in RUN_OUTPUTS if (self.out / name).exists()]
        if not earlier:
            return
        if aside.is_dir() and not (self.out / "train_summary.json").is_file():
            # The folder holds an earlier start-over that never completed; the complete run is still aside.
            for path in earlier:
                remove_path(path)
            log.info("force: an incomplete start-over removed; the complete run stays in %s", aside)
            return
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for path in earlier:
            path.rename(aside / path.name)
        log.info("force: the earlier run's outputs are in %s until this training completes", aside)

    def setup(self) -> None:
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        opts = self.opts
        self.accelerator = acc = build_accelerator(opts)
        resume_from = self._check_output()  # before any heavy work: a wrong resume/overwrite fails fast
        set_seed(opts.seed)
        self.data = load_training_data(opts, acc.main_process_first)
        self.global_batch = opts.batch_size * acc.num_processes
        self.steps = total_steps(opts, self.data, self.global_batch)
        check_model_dir(resolve_model_path(opts.model), opts.max_length)
        # Teacher scores (distillation): a run's are checked, a teacher model's computed or read from its cache.
        self.data.teacher = load_teacher(opts, self.data, acc.device, acc.main_process_first,
                                         opts.progress and acc.is_local_main_process)
        if self.data.teacher is not None:
            self.data.description["teacher"] = {"origin": self.data.teacher.origin, **self.data.teacher.info}
        self.encoder = load_encoder(opts, acc.device)
        self._clear_previous()
        self.counts = select_trainable(self.encoder, opts.trainable, opts.top_layers)
        log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in self.counts.items()))
        optimizer = make_optimizer(self.encoder, opts.lr, opts.maw_lr, opts.weight_decay)
        warmup = opts.warmup_steps or int(round(opts.warmup_ratio * self.steps))
        # Not prepared: accelerate would step a prepared scheduler once per process; we step it once per update.
        self.scheduler = get_scheduler(SCHEDULERS[opts.scheduler], optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.steps)
        self.start, self.cache, self.unwrapped = None, None, self.encoder
        if opts.trainable == "top" or opts.prefix_cache:
            self.start = top_start(self.encoder.model, opts.top_layers)
        if opts.prefix_cache:
            self.cache, self.unwrapped = self._open_cache(acc)
        self.model, self.optimizer = acc.prepare(self.unwrapped, optimizer)
        self.state = TrainerState()
        acc.register_for_checkpointing(self.scheduler, self.state)
        self.resumed_from = None
        if resume_from is not None:
            load_checkpoint(acc, resume_from)
            self.resumed_from = resume_from
            if self.state.step > self.steps:
                raise ValueError(f"option 'max_steps' ({self.steps}) is below the step of the checkpoint resumed "
                                 f"({self.state.step}, {resume_from}): raise it, or resume an earlier checkpoint")
            log.info("resumed from %s (step %d, epoch %d, offset %d)", resume_from, self.state.step,
                     self.state.position.epoch, self.state.position.offset)
        self.objective = Objective(opts, self.encoder.maw_config)
        self.collator = GroupCollator(self.encoder.tokenize, self.data.queries, self.data.docs)
        if self.cache is not None:  # the same pairs, as cached states of the frozen prefix
            pairs_of = self.collator.pairs
            self.collator = lambda groups: cached_features(self.cache, pairs_of(groups))
        if acc.is_main_process:
            self._write_run_info()
        if opts.report_to:
            acc.init_trackers("tensorboard", config=_flat_config(opts))

    def _write_run_info(self) -> None:
        from maw_reranker.utils.provenance import run_metadata
        from maw_reranker.utils.io import write_json

        self.out.mkdir(parents=True, exist_ok=True)
        info = {"options": self.opts.to_dict(), "data": self.data.description, "parameters": self.counts,
                "total_steps": self.steps, "processes": self.accelerator.num_processes,
                "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                "metadata": run_metadata(self.opts.to_dict())}
        with disk_full_names(self.out):
            write_json(self.out / "train_config.json", info)
            # Drop rows past the resumed step (they are about to be recomputed) and a torn last line.
            truncate_metrics(self.out / "metrics.jsonl", self.state.step)

    # -- loop -----------------------------------------------------------------------------------------------
    def _open_cache(self, acc):
        """The prefix cache and the top model (training runs layers >= start only)."""
        from maw_reranker.cross_encoder.prefix_cache import PrefixCache

        if acc.num_processes > 1:
            raise ValueError("option 'prefix_cache' runs in a single process (fill it once, then train); leave it out "
                             "under accelerate launch with several processes")
        cache = PrefixCache(self.opts.prefix_cache, self.encoder, self.start, dtype=self.opts.prefix_cache_dtype,
                            show_progress=self.opts.progress)
        log.info("prefix cache: %s (%d pairs cached; layers >= %d train)", cache.path, len(cache), self.start)
        return cache, TopModel(self.encoder, self.start)

    def _train_mode(self) -> None:
        """Train mode; with a frozen prefix (trainable: top, or the cache) the prefix stays in eval mode, so cached and
        uncached top-layer training draw the same dropout."""
        self.model.train()
        if self.start is not None:
            train_top(self.encoder, self.start)

    def _features(self, groups):
        acc, bs = self.accelerator, self.opts.batch_size
        mine = groups[acc.process_index * bs:(acc.process_index + 1) * bs]
        features = dict(self.collator(mine))
        if self.data.teacher is not None:  # [groups, 1 + n]; the objective binds it to the distillation loss
            features["teacher_scores"] = self.data.teacher.group_scores(mine)
        return {k: v.to(acc.device) for k, v in features.items()}

    def _lrs(self) -> dict[str, float]:
        lrs = self.scheduler.get_last_lr()
        names = [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]
        out = {}
        for name, lr in zip(names, lrs):
            key = "lr/maw" if name.startswith("maw") else "lr"
            out.setdefault(key, lr)
        return out

    def _step(self, batches) -> dict[str, float]:
        acc, opts = self.accelerator, self.opts
        micro: list[dict[str, torch.Tensor]] = []
        for _ in range(opts.grad_accum):
            features = self._features(next(batches))
            with acc.accumulate(self.model), acc.autocast():
                loss, logs = self.objective(self.model, self.unwrapped, features, self.state.step)
                acc.backward(loss)
                if acc.sync_gradients and opts.max_grad_norm > 0:
                    norm = acc.clip_grad_norm_(self.model.parameters(), opts.max_grad_norm)
                    logs["grad_norm"] = torch.as_tensor(norm).detach()
                self.optimizer.step()
                if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            logs["loss"] = loss.detach()
            micro.append(logs)
        # Mean over micro-steps of each value (grad_norm and the oracle terms exist in some micro-steps only).
        keys = sorted({k for logs in micro for k in logs})
        means = [torch.stack([m[k].float().reshape(()) for m in micro if k in m]).mean() for k in keys]
        values = acc.reduce(torch.stack(means).to(acc.device), reduction="mean")
        return dict(zip(keys, values.tolist()))

    def _evaluate(self) -> Optional[float]:
        acc, opts, dev = self.accelerator, self.opts, self.data.dev
        if dev is None:
            return None
        value = None
        if acc.is_main_process:
            scorer = CachedScorer(self.encoder, self.cache) if self.cache is not None else self.encoder
            value, aggregate = evaluate_dev(scorer, dev, opts.dev_measure, opts.dev_batch_size, opts.precision)
            self._train_mode()  # predict() restores the flags it found; the prefix must stay in eval mode
            row = {"step": self.state.step, "dev": aggregate}
            improved = self.state.best_metric is None or value > self.state.best_metric
            if improved:
                self.state.best_metric, self.state.best_step = value, self.state.step
                from maw_reranker.utils.io import write_json

                with disk_full_names(self.out):
                    save_model(self.encoder, self.out / "best", self._card("best"))
                    write_json(self.out / "best.json", {"step": self.state.step, "measure": opts.dev_measure,
                                                        "value": value, "dev_set": dev.name})
            acc.log({f"dev/{k}": v for k, v in aggregate.items()}, step=self.state.step)
            log.info("dev %s at step %d: %.4f%s", opts.dev_measure, self.state.step, value,
                     " (best)" if improved else f" (best {self.state.best_metric:.4f} at {self.state.best_step})")
            self._append_metrics(row)
        # Only the main process evaluates and tracks the best score (it is the one whose state is checkpointed).
        acc.wait_for_everyone()
        return value

    def _card(self, saved: str, train_seconds: Optional[float] = None):
        """The model card's facts of this run (train/card.py) for the model saved as ``saved`` (final or best)."""
        from maw_reranker.train.card import training_card

        state = self.state
        best = None if state.best_metric is None else {
            "step": state.best_step, "value": state.best_metric, "measure": self.opts.dev_measure,
            "dev_set": self.data.dev.name if self.data.dev is not None else None}
        return training_card(self.opts, self.data.description, self.counts, saved=saved, output_dir=self.out,
                             steps=state.step, train_seconds=train_seconds, best=best)

    def _append_metrics(self, row: dict) -> None:
        with disk_full_names(self.out), open(self.out / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def _checkpoint(self) -> None:
        with disk_full_names(self.out):
            save_checkpoint(self.accelerator, self.state, self.out, self.opts.keep_checkpoints)

    def run(self) -> TrainResult:
        if not hasattr(self, "state"):
            self.setup()
        acc, opts, state = self.accelerator, self.opts, self.state
        batches = iter_batches(self.data.source, self.global_batch, state.position)
        pairs_per_step = self.global_batch * opts.grad_accum * opts.group_size
        bar = progress_bar(self.steps, opts.progress and acc.is_local_main_process, "train", unit="step",
                           initial=state.step)
        history, window, train_time, start_step, saved_at = [], [], 0.0, state.step, state.step
        self._train_mode()
        while state.step < self.steps:
            t0 = time.perf_counter()
            logs = self._step(batches)
            elapsed = time.perf_counter() - t0
            train_time += elapsed
            state.step += 1
            row = {"step": state.step, "epoch": state.position.epoch, **logs, **self._lrs(),
                   "pairs_per_s": pairs_per_step / elapsed}
            history.append(row)
            window.append(row)
            if acc.is_main_process:
                self._append_metrics(row)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{row['lr']:.2e}",
                            pairs_s=f"{pairs_per_step * (state.step - start_step) / train_time:.1f}")
            if state.step % opts.log_every == 0 or state.step == self.steps:
                keys = {k for r in window for k in r if k not in ("step", "epoch")}
                acc.log({k: sum(r[k] for r in window if k in r) / sum(1 for r in window if k in r) for k in keys},
                        step=state.step)
                window = []
            for callback in self.callbacks:
                callback(state.step, row)
            # A step's dev evaluation comes before its checkpoint, so that the checkpoint holds the best score so far
            # (a run resumed from it compares later scores with that one); the last step's checkpoint is written
            # after the final dev evaluation (below), once.
            if opts.dev_every and state.step % opts.dev_every == 0 and state.step < self.steps:
                self._evaluate()
            if opts.checkpoint_every and state.step % opts.checkpoint_every == 0 and state.step < self.steps:
                self._checkpoint()
                saved_at = state.step
        bar.close()
        if self.data.dev is not None:
            self._evaluate()
        if saved_at != state.step or not complete_checkpoints(self.out):
            self._checkpoint()
        final = self.out / "final"
        if acc.is_main_process:
            from maw_reranker.utils.io import write_json

            done = state.step - start_step
            with disk_full_names(self.out):  # a full disk is named with the folder, not as an unexpected error
                save_model(self.encoder, final, self._card("final", None if self.resumed_from else train_time))
                write_json(self.out / "train_summary.json", {
                    "steps": state.step, "steps_this_session": done, "best_metric": state.best_metric,
                    "best_step": state.best_step, "final_model": str(final), "train_seconds": round(train_time, 3),
                    "parameters": dict(self.counts),
                    "pairs_per_second": round(pairs_per_step * done / train_time, 3) if train_time else None,
                    "last": history[-1] if history else None})
        if self.cache is not None:
            self.cache.close()  # states computed since the last shard
        if acc.is_main_process:
            shutil.rmtree(self.out / PREVIOUS, ignore_errors=True)  # the overwritten run, now replaced
        acc.wait_for_everyone()
        acc.end_training()
        rate = pairs_per_step * (state.step - start_step) / train_time if train_time else 0.0
        return TrainResult(self.out, final, state.step, history, state.best_metric, state.best_step, rate, train_time,
                           dict(self.counts))


def train(opts: TrainOptions, callbacks: Optional[list[Callable]] = None) -> TrainResult:
    """Fine-tune as configured by ``opts``; see docs/training.md."""
    try:
        return Trainer(opts, callbacks).run()
    finally:
        release_accelerator_state()


def release_accelerator_state() -> None:
    """Accelerate keeps its settings (mixed precision, accumulation) in process-wide singletons; clear them after a
    single-process run so that a later ``train()`` in the same Python process may use other settings."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes > 1:
        return
    AcceleratorState._reset_state()
    GradientState._reset_state()
