# Shared helpers of the reproduction scripts (sourced, not run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -n "${MAW_RERANK:-}" ]]; then read -r -a CLI <<<"$MAW_RERANK"
elif command -v maw-rerank >/dev/null 2>&1; then CLI=(maw-rerank)
elif [[ -x "$ROOT/.venv/bin/maw-rerank" ]]; then CLI=("$ROOT/.venv/bin/maw-rerank")
else echo "error: maw-rerank not found; run 'make setup' (or pip install -e .) first" >&2; exit 1; fi
DRY_RUN=0
trap 'echo "error: $(basename "$0") stopped at line $LINENO (exit $?): see the message above" >&2' ERR

# run CMD...: print it, then run it unless --dry-run
run() {
  echo "+ $*"
  if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

# suite ARGS...: run a suite; with --dry-run the suite still loads and validates every run, then lists them
suite() {
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "+ ${CLI[*]} suite $* --dry-run"
    "${CLI[@]}" suite "$@" --dry-run
  else
    run "${CLI[@]}" suite "$@"
  fi
}
