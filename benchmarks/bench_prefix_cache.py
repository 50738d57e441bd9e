"""Top-layer training from a frozen-prefix cache vs full fine-tuning: one table, measured side by side in one run.

Model: cross-encoder/ms-marco-MiniLM-L-12-v2 (or --model, a hub id or folder) when present (our offline set-up,
benchmarks/offline_setup.py: hub ids resolve from the Hugging Face cache with HF_HUB_OFFLINE=1, seeded by
bash ../shared/tools/seed-hf-cache.sh), else a random-weight model of the same shape (BERT, 12 layers, hidden 384,
12 heads, FFN 1536, vocab 30522, dropout 0.1)
with a word-level tokenizer; MAW (default settings: stat gating, D = 8; ``--no-maw``: none) in the last layer,
max_length 256; documents of 30..150 random words (``--doc-words``; MS MARCO passages run 50..100 words) and
queries of 4..11 random whole words of the vocabulary (about 100 tokens a pair; a batch pads to its longest pair,
as a training collator does).
A training step = forward + backward + AdamW step on one batch of G groups x P pairs (listwise softmax
cross-entropy, the group's first pair the positive), in train mode (dropout on):

* full      full fine-tuning: every parameter trains, the whole model runs forward and backward;
* uncached  top-k training without a cache: the prefix runs (eval mode, no grad) and the top trains;
* cached    top-k training from the cache: the batch's prefix states are read from the fp16 disk cache (filled
            beforehand, fill time reported apart) and only the top layer and head run.

The three step kinds are interleaved step by step (each on its own copy of the model) so machine load hits them
alike; the table reports the median step time. Then a correctness check: cached (fp32 cache) and uncached top-k
training from the same initial weights, the same batches and the same seeds give the same losses step for step
(and with the fp16 cache, close ones).

``--maw-cost`` (issue 21, "MAW's own cost") measures instead, side by side and interleaved step by step, the
cached top-layer training step (k=1, the trainer's objective: ``TopModel`` over cached prefix states, forward +
backward + AdamW) of: no MAW (top-k), and MAW at D=8 in the last layer with ``learned``, ``gate``, ``project``
(``depth_source: project``, learned gating), ``stat`` (reference), ``router`` with oracle supervision
(``router_oracle_weight`` 1, ``oracle_every`` 1; its D forced depths in one batched pass) and ``grpo`` (G=2, one
sample per pass: the trainer's default on a CPU); each variant's median step over the no-MAW one, with PASS/FAIL
lines for the issue's targets (learned/gate/project <= 1.5x, router (oracle) and grpo <= 2.5x). ``router-seq`` is
the router step with the oracle's D forced depths run as D separate passes (the trainer's default on a CPU, where it
measured faster), and ``grpo-batched`` GRPO with its G samples in one pass (the default elsewhere), for comparison
(``--no-sequential`` leaves out router-seq).

usage: python benchmarks/bench_prefix_cache.py [--model ID_OR_DIR] [--k 1] [--groups 8] [--group-size 8] [--steps 2]
           [--check-steps 2] [--check-groups 2] [--max-length 256] [--doc-words 30 150] [--gating stat] [--no-maw]
           [--quick] [--maw-cost [--no-sequential] [--variants NAME ...]]
The default run takes about 3-4 minutes on 2 shared CPU cores (full fine-tuning steps dominate).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from offline_setup import CROSS_ENCODER, model_folder  # noqa: E402  (first: sets HF_HUB_OFFLINE)
from maw_reranker import CrossEncoderWithMAW, MAWConfig  # noqa: E402
from maw_reranker.cross_encoder.prefix import freeze_prefix, split_layer, top_forward, train_top  # noqa: E402
from maw_reranker.cross_encoder.prefix_cache import PrefixCache  # noqa: E402

MINILM = dict(model_type="bert", vocab_size=30522, hidden_size=384, num_layers=12, num_heads=12,
              intermediate_size=1536, max_positions=512, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def build_random_minilm(directory: Path) -> Path:
    from maw_reranker.utils.tiny_models import tiny_model, write_word_tokenizer

    words = [f"w{i}" for i in range(MINILM["vocab_size"] - 5)]
    tokenizer = write_word_tokenizer(directory, words, max_length=512)
    config = dict(MINILM)
    model = tiny_model(config.pop("model_type"), seed=0, initializer_range=0.02, **config)
    assert model.config.vocab_size == len(tokenizer)
    model.save_pretrained(directory)
    return directory


def make_batches(tokenizer, steps: int, groups: int, group_size: int, doc_words: tuple[int, int], seed: int = 0):
    """``steps`` batches of ``groups x group_size`` pairs of random whole words of the tokenizer's vocabulary (one
    token each); documents of ``doc_words`` words."""
    gen = torch.Generator().manual_seed(seed)
    words = sorted(w for w in tokenizer.get_vocab() if re.fullmatch(r"[a-z][a-z0-9]+", w))

    def text(n: int) -> str:
        return " ".join(words[int(i)] for i in torch.randint(len(words), (n,), generator=gen))

    batches = []
    for _ in range(steps):
        pairs = []
        for _ in range(groups):
            query = text(int(torch.randint(4, 12, (1,), generator=gen)))
            for _ in range(group_size):
                pairs.append((query, text(int(torch.randint(doc_words[0], doc_words[1] + 1, (1,), generator=gen)))))
        batches.append(pairs)
    return batches


def listwise_loss(logits: torch.Tensor, group_size: int) -> torch.Tensor:
    scores = logits.view(-1, group_size)
    return torch.nn.functional.cross_entropy(scores, torch.zeros(scores.shape[0], dtype=torch.long))


class Runner:
    """One copy of the model and its optimizer, trained one way."""

    def __init__(self, model: CrossEncoderWithMAW, kind: str, start: int, group_size: int,
                 cache: PrefixCache | None):
        self.model, self.kind, self.start, self.group_size, self.cache = model, kind, start, group_size, cache
        params = list(model.parameters()) if kind == "full" else freeze_prefix(model, start)
        self.trainable = sum(p.numel() for p in params)
        self.opt = torch.optim.AdamW(params, lr=2e-5)

    def step(self, pairs, seed: int) -> float:
        model = self.model
        if self.kind == "full":
            model.train()
        else:
            train_top(model, self.start)
        self.opt.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        if self.kind == "cached":
            logits = top_forward(model, self.cache.get(pairs), self.start)
        else:
            logits = model(**model.tokenize(pairs))  # prefix in eval mode and frozen for "uncached"
        loss = listwise_loss(logits, self.group_size)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=f"hub id or model directory (default: {CROSS_ENCODER} from the "
                    "Hugging Face cache, else a random model of its shape)")
    ap.add_argument("--k", type=int, default=1, help="trainable top layers (MAW in the last one)")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps of each kind (interleaved; default 2, with --maw-cost 3)")
    ap.add_argument("--check-steps", type=int, default=2, help="steps of the cached-vs-uncached loss check")
    ap.add_argument("--check-groups", type=int, default=2, help="groups per batch in the loss check (default 2)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--doc-words", type=int, nargs=2, default=(30, 150), metavar=("MIN", "MAX"),
                    help="document length range in words (default 30 150)")
    ap.add_argument("--gating", default="stat", help="MAW gating mode of the last layer (default: stat)")
    ap.add_argument("--no-maw", action="store_true", help="the plain model (top-k fine-tuning without MAW)")
    ap.add_argument("--quick", action="store_true", help="2 timed steps, 2 check steps, 4 x 4 pairs")
    ap.add_argument("--maw-cost", action="store_true", help="the cached top-layer training step of each MAW variant "
                    "against the step without MAW (issue 21's targets), instead of the cache table")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(COST_VARIANTS),
                    help="--maw-cost: the variants to time (default: all; topk is always timed)")
    ap.add_argument("--no-sequential", action="store_true", help="--maw-cost: leave out router-seq")
    ap.add_argument("--warmup", type=int, default=1, help="--maw-cost: untimed steps of each variant first")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 3 if args.maw_cost and not args.quick else 2
    if args.quick:
        args.steps, args.check_steps, args.groups, args.group_size, args.check_groups = 2, 2, 4, 4, 2

    work = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    try:
        return run_maw_cost(args, work) if args.maw_cost else run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    model_dir = model_folder(args.model or CROSS_ENCODER)
    if model_dir is None:
        if args.model:
            raise SystemExit(f"model not found (a folder, or a hub id in the Hugging Face cache): {args.model}")
        model_dir = build_random_minilm(work / "minilm-random")
        source = "random weights, MiniLM-L12 shape"
    else:
        source = args.model or CROSS_ENCODER
    maw = None if args.no_maw else MAWConfig(inject_last_k=1, gating_mode=args.gating)
    base = CrossEncoderWithMAW.from_pretrained(model_dir, maw=maw, max_length=args.max_length, device="cpu")
    start = split_layer(base, args.k)
    batches = make_batches(base.tokenizer, args.steps + args.check_steps, args.groups, args.group_size,
                           tuple(args.doc_words))
    timed_batches = batches[:args.steps]
    check_batches = [b[:args.check_groups * args.group_size] for b in batches[args.steps:]]
    tokens = [int(base.tokenize(b)["attention_mask"].sum()) for b in batches]
    variant = "no MAW" if maw is None else f"MAW {maw.gating_mode} D={maw.depth_dim} in the last layer"
    print(f"model: {source}; {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters; {variant}; "
          f"top k={args.k} (start layer {start}); max_length {args.max_length}; "
          f"batch {args.groups} x {args.group_size} pairs, {statistics.mean(tokens) / len(batches[0]):.0f} tokens/pair "
          f"on average; torch threads {torch.get_num_threads()}", flush=True)

    # The cache is built from the initial weights; the prefix never changes for top-k training.
    cache16 = PrefixCache(work / "cache", base, start, dtype="fp16", batch_size=32, show_progress=True)
    fill_s, _ = timed(lambda: cache16.fill([p for b in batches for p in b]))
    n_pairs = sum(len(b) for b in batches)
    cache32 = PrefixCache(work / "cache", base, start, dtype="fp32", batch_size=32, show_progress=False)
    cache32.fill([p for b in check_batches for p in b])

    runners = {kind: Runner(copy.deepcopy(base), kind, start, args.group_size, cache16 if kind == "cached" else None)
               for kind in ("full", "uncached", "cached")}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i, pairs in enumerate(timed_batches):
        for kind, runner in runners.items():
            seconds, loss = timed(lambda: runner.step(pairs, seed=1000 + i))
            times[kind].append(seconds)
            print(f"  step {i} {kind:8s} {seconds:7.3f} s  loss {loss:.4f}", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    bsz = len(timed_batches[0])
    print()
    print(f"| step ({args.groups}x{args.group_size} pairs, fwd+bwd+AdamW) | trainable params | median s/step "
          f"| pairs/s | speed-up vs full |")
    print("|---|---:|---:|---:|---:|")
    for kind, label in (("full", "full fine-tuning"), ("uncached", f"top-{args.k}, no cache"),
                        ("cached", f"top-{args.k}, from fp16 cache")):
        r = runners[kind]
        print(f"| {label} | {r.trainable / 1e6:.2f}M | {med[kind]:.3f} | {bsz / med[kind]:.1f} "
              f"| {med['full'] / med[kind]:.1f}x |")
    print(f"\ncache fill (prefix forward, once per pair): {n_pairs} pairs in {fill_s:.1f} s "
          f"({n_pairs / fill_s:.1f} pairs/s); disk {cache16.disk_bytes() / n_pairs / 1024:.0f} KB/pair in fp16")
    ratio = med["full"] / med["cached"]
    print(f"ratio full / cached = {ratio:.1f}x (target >= 8x): {'OK' if ratio >= 8 else 'BELOW TARGET'}")

    # Correctness: cached vs uncached top-k training, step for step, from the same weights and seeds.
    print("\nlosses, cached vs uncached top-k training (same initial weights, batches and seeds; dropout on):")
    check = {name: Runner(copy.deepcopy(base), kind, start, args.group_size, cache)
             for name, kind, cache in (("uncached", "uncached", None), ("cached-fp32", "cached", cache32),
                                       ("cached-fp16", "cached", cache16))}
    worst32 = worst16 = 0.0
    print("| step | uncached | cached (fp32) | cached (fp16) |")
    print("|---:|---:|---:|---:|")
    for i, pairs in enumerate(check_batches):
        losses = {name: r.step(pairs, seed=2000 + i) for name, r in check.items()}
        worst32 = max(worst32, abs(losses["cached-fp32"] - losses["uncached"]))
        worst16 = max(worst16, abs(losses["cached-fp16"] - losses["uncached"]))
        print(f"| {i} | {losses['uncached']:.6f} | {losses['cached-fp32']:.6f} | {losses['cached-fp16']:.6f} |")
    same = worst32 <= 1e-4
    print(f"max |loss difference|: fp32 cache {worst32:.2e} ({'same' if same else 'DIFFERENT'} to 1e-4), "
          f"fp16 cache {worst16:.2e}")
    return 0 if same else 1


# -- --maw-cost: MAW's own cost in cached top-layer training (issue 21) -------------------------------------------
D = 8
#: name: (MAWConfig fields or None for no MAW, extra objective options, target ratio to topk or None)
COST_VARIANTS = {
    "topk": (None, {}, None),
    "learned": ({"gating_mode": "learned"}, {}, 1.5),
    "gate": ({"gating_mode": "gate"}, {}, 1.5),
    "project": ({"gating_mode": "learned", "depth_source": "project"}, {}, 1.5),
    "stat": ({"gating_mode": "stat"}, {}, None),
    "router": ({"gating_mode": "router"}, {"router_oracle_weight": 1.0, "oracle_every": 1}, 2.5),
    "router-seq": ({"gating_mode": "router"}, {"router_oracle_weight": 1.0, "oracle_every": 1}, None),
    "grpo": ({"gating_mode": "grpo"}, {"grpo_group_size": 2}, 2.5),
    "grpo-batched": ({"gating_mode": "grpo"}, {"grpo_group_size": 2}, None),
}


def objective_options(group_size: int, **extra):
    """The trainer's objective settings (TrainOptions' defaults for the fields the objective reads)."""
    from types import SimpleNamespace

    from maw_reranker.train.config import TrainOptions

    fields = ("loss", "margin", "temperature", "router_oracle_weight", "oracle_every", "grpo_group_size",
              "grpo_beta", "grpo_eta", "grpo_weight", "grpo_eps")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.name in fields}
    return SimpleNamespace(**{**defaults, "group_size": group_size, **extra})


class CostRunner:
    """One variant's model, top model and optimizer; a step is the trainer's: its objective on cached states."""

    def __init__(self, name: str, model_dir: Path, args, start: int, cache: PrefixCache):
        from maw_reranker.cross_encoder.top import TopModel
        from maw_reranker.train.objective import Objective

        fields, extra, self.target = COST_VARIANTS[name]
        self.name = name
        maw = None if fields is None else MAWConfig(inject_last_k=1, depth_dim=D, **fields)
        self.encoder = CrossEncoderWithMAW.from_pretrained(model_dir, maw=maw, max_length=args.max_length,
                                                           device="cpu")
        self.start, self.cache = start, cache
        self.top = TopModel(self.encoder, start)
        params = freeze_prefix(self.encoder, start)
        self.opt = torch.optim.AdamW(params, lr=2e-5)
        self.objective = Objective(objective_options(args.group_size, **extra), maw)
        self.sequential = name in ("router-seq", "grpo")

    def step(self, pairs, seed: int, step: int) -> float:
        from maw_reranker.train import routing

        self.top.train()
        self.opt.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        batch = self.cache.get(pairs)
        mask = batch["attention_mask"]
        features = {"input_ids": torch.zeros_like(mask, dtype=torch.long), "attention_mask": mask,
                    "hidden_states": batch["hidden_states"]}
        rows = routing.CPU_REPLICATED_ROWS
        # router / grpo-batched: the D forced depths (G samples) in one batched pass; router-seq / grpo: one copy
        # per pass (the trainer's default on a CPU, where it measured faster)
        routing.CPU_REPLICATED_ROWS = 1 if self.sequential else routing.MAX_REPLICATED_ROWS
        try:
            loss, _ = self.objective(self.top, self.top, features, step)
        finally:
            routing.CPU_REPLICATED_ROWS = rows
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def run_maw_cost(args, work: Path) -> int:
    model_dir = model_folder(args.model or CROSS_ENCODER)
    if model_dir is None:
        if args.model:
            raise SystemExit(f"model not found (a folder, or a hub id in the Hugging Face cache): {args.model}")
        model_dir = build_random_minilm(work / "minilm-random")
        source = "random weights, MiniLM-L12 shape"
    else:
        source = args.model or CROSS_ENCODER
    names = ["topk"] + [n for n in (args.variants or COST_VARIANTS) if n != "topk"]
    if args.no_sequential and "router-seq" in names:
        names.remove("router-seq")
    base = CrossEncoderWithMAW.from_pretrained(model_dir, maw=None, max_length=args.max_length, device="cpu")
    start = split_layer(base, 1)
    batches = make_batches(base.tokenizer, args.warmup + args.steps, args.groups, args.group_size,
                           tuple(args.doc_words))
    tokens = [int(base.tokenize(b)["attention_mask"].sum()) for b in batches]
    print(f"model: {source}; cached top-layer training (layer {start} and the head train, from an fp16 cache of the "
          f"prefix); MAW D={D} in the last layer; max_length {args.max_length}; batch {args.groups} x "
          f"{args.group_size} pairs, {statistics.mean(tokens) / len(batches[0]):.0f} tokens/pair on average; "
          f"torch threads {torch.get_num_threads()}; variants {', '.join(names)}", flush=True)
    # The prefix (layers < start) is the pretrained one in every variant: one cache serves all.
    cache = PrefixCache(work / "cache", base, start, dtype="fp16", batch_size=32, show_progress=False)
    cache.fill([p for b in batches for p in b])
    del base
    runners = {n: CostRunner(n, model_dir, args, start, cache) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for i, pairs in enumerate(batches):
        warm = i < args.warmup
        for name in names:  # interleaved: machine load hits every variant alike
            seconds, loss = timed(lambda: runners[name].step(pairs, seed=1000 + i, step=i))
            if not warm:
                times[name].append(seconds)
            print(f"  step {i}{' (warm-up)' if warm else ''} {name:10s} {seconds:7.3f} s  loss {loss:.4f}",
                  flush=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"\n| variant (cached top-layer step, {args.groups}x{args.group_size} pairs, fwd+bwd+AdamW) "
          f"| median s/step | x topk | target |")
    print("|---|---:|---:|---:|")
    for name in names:
        target = runners[name].target
        print(f"| {name} | {med[name]:.3f} | {med[name] / med['topk']:.2f}x | "
              f"{'' if target is None else f'<= {target}x'} |")
    print()
    failed = 0
    for name in names:
        target = runners[name].target
        if target is None:
            continue
        ratio = med[name] / med["topk"]
        ok = ratio <= target
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}: {name} step {ratio:.2f}x the step without MAW (target <= {target}x)")
    if "router-seq" in med and "router" in med:
        print(f"router oracle, D forced depths batched vs sequential: {med['router']:.3f} s vs "
              f"{med['router-seq']:.3f} s a step ({med['router-seq'] / med['router']:.2f}x)")
    if "grpo-batched" in med and "grpo" in med:
        print(f"grpo, G samples batched vs one per pass: {med['grpo-batched']:.3f} s vs {med['grpo']:.3f} s a step "
              f"({med['grpo'] / med['grpo-batched']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
