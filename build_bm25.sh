#!/usr/bin/env bash
# Build BM25 candidate pools: a thin wrapper over `maw-rerank build-pools`.
#   ./build_bm25.sh [DATASET ...] [build-pools flags]
# Each DATASET (a name from `maw-rerank datasets`, a path, or a dataset .yaml config) gets its own
# build-pools run with the same flags; without DATASETs the flags are passed through unchanged.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: ./build_bm25.sh [DATASET ...] [--pool-engine pyserini|bm25s|auto] [--pool-k 1000] [--k1 0.9] [--b 0.4]
                       [--pools-dir pools] [--force] [other `maw-rerank build-pools` flags]

Examples:
  ./build_bm25.sh scifact nfcorpus --pool-engine pyserini
  ./build_bm25.sh path/to/scifact-beir-folder --pool-engine bm25s --pool-k 100   # a local BEIR folder
  ./build_bm25.sh --config trec-dl-2019-passage --pool-k 100       # a packaged dataset config, by name

Pools are cached: <pools-dir>/<dataset>/bm25-<engine>-k<k>.run is rebuilt only with --force.

USAGE
}

if [[ -n "${MAW_RERANK:-}" ]]; then
  read -r -a cli <<<"$MAW_RERANK"
elif command -v maw-rerank >/dev/null 2>&1; then
  cli=(maw-rerank)
elif [[ -x "$(dirname "$0")/.venv/bin/maw-rerank" ]]; then
  cli=("$(dirname "$0")/.venv/bin/maw-rerank")
else
  cli=(python -m maw_reranker.cli.main)
fi

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
    usage
    exec "${cli[@]}" build-pools --help
  fi
done

datasets=()
while [[ $# -gt 0 && "$1" != -* ]]; do
  datasets+=("$1")
  shift
done

if [[ ${#datasets[@]} -eq 0 ]]; then
  exec "${cli[@]}" build-pools "$@"
fi
for dataset in "${datasets[@]}"; do
  if [[ "$dataset" == *.yaml || "$dataset" == *.yml ]]; then
    "${cli[@]}" build-pools --config "$dataset" "$@"
  else
    "${cli[@]}" build-pools --dataset "$dataset" "$@"
  fi
done
