#!/usr/bin/env bash
# Rebuild every shipped toy model from scratch (maintainers; never run by CI), then ship what the default run built.
#
#   bash tools/rebuild_shipped.sh /tmp/fresh-cache          # 76 min on 2 cores (measured); the notebooks' outputs go to /tmp/rebuild-runs
#   python tools/ship_models.py /tmp/fresh-cache --skip eval_ --clean   # then ship it (the script prints this line)
#   longalign-zoo --verify && git add longalign/shipped     # check the copies, commit them with the notebooks' outputs
#
# The notebooks run at their defaults into an empty cache with the shipped copies hidden (LONGALIGN_SHIPPED points at an
# empty folder), on two lanes with one thread each: 00a builds the zoo; then 04 (the SFT runs) beside 02 -> 03 ->
# the keep-eot SFT run (one of 04's four, built here to balance the lanes) -> 05; then 06 and 07. An entry one lane needs while the other builds it is waited for (cached_build holds a lock per entry).
# Any notebook that fails stops the run (the other lane too) with a non-zero exit.
# Measured on 2 cores (2026-12-05): 00a 26 min (the zoo, one model after another), then 04 40 min beside 02 -> 03 ->
# keep-eot SFT -> 05 46 min, then 06 and 07 4 min: 76 min, over the 60-minute budget; the 1500-step SFT runs (10-13 min
# each on one thread) and 05's twelve RFT runs are most of it.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash tools/rebuild_shipped.sh <empty cache folder>"; exit 2; }
cache=$(realpath -m -- "$1")
runs=$(realpath -m -- "${REBUILD_RUNS:-/tmp/rebuild-runs}")
cd "$(dirname "$0")/.."
[ -z "$(ls -A "$cache" 2>/dev/null)" ] || { echo "$cache is not empty: give an empty folder (a full rebuild)"; exit 1; }
mkdir -p "$cache" "$runs"
rm -f "$runs"/*.log   # the shipped-copy check at the end reads every log here
hidden=$(mktemp -d)
trap 'for p in $(jobs -p); do pkill -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; rm -rf "$hidden"' EXIT   # a failed lane stops the other
export LONGALIGN_CACHE=$cache LONGALIGN_SHIPPED=$hidden OMP_NUM_THREADS=1
start=$(date +%s)
run() {
  local t0; t0=$(date +%s)
  papermill -k python3 "nbs/$1.ipynb" "$runs/$1.ipynb" --cwd nbs > "$runs/$1.log" 2>&1 || { echo "$1 failed: $runs/$1.log"; return 1; }
  echo "$1 done in $(( $(date +%s) - t0 )) s"
}
run 00a_toyworld
run 04_sft & sft=$!
keep_eot_sft() {   # 04 trains it last and 05 needs it: built on this lane, 04 finds it in the cache (or waits on its lock)
  [ -n "${IN_TEST:-}" ] && return 0   # smoke sizes: 04 builds its own smoke-size run
  local t0; t0=$(date +%s)
  python -c 'from longalign.experiments import toy_sft; from longalign.sft import SFTConfig
toy_sft("clip-cat", SFTConfig.for_preset("toy", policy="keep-eot"))' > "$runs/sft_keep_eot.log" 2>&1 || { echo "the keep-eot SFT failed: $runs/sft_keep_eot.log"; return 1; }
  echo "keep-eot SFT done in $(( $(date +%s) - t0 )) s"
}
(run 02_denscore && run 03_decomposition && keep_eot_sft && run 05_rft) & rest=$!
wait "$sft" || { echo "the SFT lane failed: nothing to ship"; exit 1; }
wait "$rest" || { echo "the 02 -> 03 -> keep-eot SFT -> 05 lane failed: nothing to ship"; exit 1; }
run 06_eval
run 07_tables
# nothing may come from the shipped copies (a notebook that unset LONGALIGN_SHIPPED would load them): grep finds none = 1
set +e; grep -lF "using the copy shipped with the package ($cache/" "$runs"/*.log; found=$?; set -e
[ "$found" -eq 1 ] || { echo "the logs above loaded shipped copies (or could not be read): not a rebuild from scratch, nothing to ship"; exit 1; }
echo "rebuilt in $(( $(date +%s) - start )) s"
echo "ship it with: python tools/ship_models.py $cache --skip eval_ --clean"
