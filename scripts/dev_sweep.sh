#!/usr/bin/env bash
# The strength x depth sweep of zero-shot `stat` MAW on MS MARCO dev (200 queries, BM25 top-100; the MS MARCO
# corpus comes through ir_datasets). Offline: --offline sweeps on the local SciFact train split instead.
# Usage: scripts/dev_sweep.sh [--offline] [--dry-run]
source "$(dirname "$0")/_common.sh"
DATASETS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --offline) DATASETS='[{config: scifact-local, split: train, max_queries: 200}]'; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$DATASETS" ]]; then
  suite --config dev_sweep --datasets "$DATASETS"
else
  run ./build_bm25.sh MSMARCO/dev-small --pool-k 100
  suite --config dev_sweep
fi
