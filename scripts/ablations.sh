#!/usr/bin/env bash
# Ablations against the unpatched model: depth (1-16), gating (uniform/random/argmax/stat), injection depth
# (last 1 vs last 2), then the learned modes and LoRA fine-tuning (trained first with `maw-rerank train`).
# Default data: the offline TREC DL 2019 BM25 top-100 copy. Idempotent.
# Usage: scripts/ablations.sh [--seeds 0,1,2] [--dataset CONFIG] [--skip-training] [--steps N] [--dry-run]
source "$(dirname "$0")/_common.sh"
SEEDS=0,1,2; DATASET=dl19-rankllm-bm25; TRAIN=1; STEPS=300
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --dataset) DATASET=$2; shift 2 ;;
    --skip-training) TRAIN=0; shift ;;
    --steps) STEPS=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
suite --config ablations --seeds "$SEEDS" --datasets "[$DATASET]"
if [[ $TRAIN -eq 1 ]]; then
  for recipe in scifact_finetune scifact_maw lora router grpo; do
    run "${CLI[@]}" train --config "$recipe" --max-steps "$STEPS" \
      --output-dir "runs/ablations/$recipe"
  done
  suite --config learned --seeds "$SEEDS"
fi
