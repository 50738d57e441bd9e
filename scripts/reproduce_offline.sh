#!/usr/bin/env bash
# The study on local data, for machines without internet: TREC DL 2019 BM25 top-100 candidates with texts and a
# BEIR-layout SciFact folder; BM25 pools by the embedded engine; non_maw vs maw_default plus the zero-shot
# ablations, 3 seeds, summaries with significance tests. Idempotent.
# Usage: scripts/reproduce_offline.sh DL19_DIR SCIFACT_DIR [--model MODEL] [--seeds 0,1,2] [--dry-run]
#   e.g. scripts/reproduce_offline.sh ../shared/data/trec-dl-2019-passage ../shared/data/scifact
source "$(dirname "$0")/_common.sh"
SEEDS=0,1,2; MODEL=""; POS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) SEEDS=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) POS+=("$1"); shift ;;
  esac
done
if [[ ${#POS[@]} -ne 2 ]]; then echo "error: expected DL19_DIR and SCIFACT_DIR (see --help)" >&2; exit 2; fi
DL19=${POS[0]}; SCIFACT=${POS[1]}
DL19_JSON="$DL19/rank_llm/BM25/retrieve_results_dl19.json"
for f in "$DL19_JSON" "$DL19/qrels.dl19-passage.txt" "$SCIFACT/corpus.jsonl" "$SCIFACT/qrels/test.tsv"; do
  [[ -f "$f" ]] || { echo "error: missing $f" >&2; exit 1; }
done
run "${CLI[@]}" build-pools --dataset "$SCIFACT" --split test --dataset-name scifact-local --pool-engine bm25s --pool-k 1000
datasets="[{dataset: $DL19_JSON, qrels: $DL19/qrels.dl19-passage.txt, dataset_name: dl19-rankllm-bm25, measures: [nDCG@10, 'RR(rel=2)@10', 'R(rel=2)@100']}, {dataset: $SCIFACT, split: test, dataset_name: scifact-local, depth: 100, pool_engine: bm25s}]"
overrides="{${MODEL:+model: $MODEL}}"
suite --config ablations --name offline --seeds "$SEEDS" \
  --datasets "$datasets" --overrides "$overrides"
echo "summaries: experiments/<dataset>/_suites/offline/summary.md"
