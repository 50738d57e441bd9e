#!/usr/bin/env bash
# The MAW study (docs/study.md): per protocol (DL19 -> DL20 and SciFact on official data; with --local the copies of
# benchmarks/configs: DL19 -> DL21 and SciFact), top-layer fine-tuning of ms-marco-MiniLM-L-12-v2 with and without
# MAW (learned, gate, router, grpo, project) and a parameter-matched LoRA, 3 seeds each, evaluated as suites with
# significance tests against top-k fine-tuning without MAW.
# Usage: scripts/study.sh [--quick] [--dry-run] [--local] [--config STUDY] [--only PROTOCOL] [--model MODEL]
#                         [--seeds 0 1 2]      (--local needs MAW_DATA: the folder of the local data copies)
source "$(dirname "$0")/_common.sh"
CONFIG=maw; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) EXTRA+=(--quick-run); shift ;;
    --local) CONFIG=maw-local; export MAW_CONFIG_PATH="$ROOT/benchmarks/configs${MAW_CONFIG_PATH:+:$MAW_CONFIG_PATH}"
             [[ -n "${MAW_DATA:-}" ]] || { echo "error: --local needs MAW_DATA (e.g. MAW_DATA=../shared/data)" >&2; exit 2; }
             shift ;;
    --config) CONFIG=$2; shift 2 ;;
    --only) EXTRA+=(--only "$2"); shift 2 ;;
    --model) EXTRA+=(--model "$2"); shift 2 ;;
    --seeds) shift; SEEDS=(); while [[ $# -gt 0 && "$1" != -* ]]; do SEEDS+=("$1"); shift; done
             EXTRA+=(--seeds "${SEEDS[@]}") ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $DRY_RUN -eq 1 ]]; then
  echo "+ ${CLI[*]} study --config $CONFIG ${EXTRA[*]} --dry-run"
  "${CLI[@]}" study --config "$CONFIG" "${EXTRA[@]}" --dry-run
else
  start=$(date +%s)
  run "${CLI[@]}" study --config "$CONFIG" "${EXTRA[@]}"
  echo "wall time: $(( $(date +%s) - start )) s"
fi
