#!/usr/bin/env bash
# The study's main table: non_maw vs maw_default on MS MARCO dev-small and TREC DL 2019/2020 (BM25 top-1000
# pools, official data through ir_datasets: needs internet the first time), 3 seeds, summaries with significance.
# Idempotent: cached pools and complete runs are reused. Usage: scripts/reproduce_main.sh [--seeds 0,1,2]
#   [--model MODEL] [--pool-engine auto|pyserini|bm25s] [--output-dir experiments] [--dry-run]
source "$(dirname "$0")/_common.sh"
SEEDS=0,1,2; MODEL=""; ENGINE=auto; OUT=experiments
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --pool-engine) ENGINE=$2; shift 2 ;;
    --output-dir) OUT=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
run ./build_bm25.sh MSMARCO/dev-small TREC-DL-2019-passage TREC-DL-2020-passage --pool-engine "$ENGINE" --pool-k 1000
overrides="{pool_engine: $ENGINE, pool_k: 1000${MODEL:+, model: $MODEL}}"
suite --config main --seeds "$SEEDS" --output-dir "$OUT" \
  --overrides "$overrides"
echo "summaries: $OUT/<dataset>/_suites/main/summary.md"
