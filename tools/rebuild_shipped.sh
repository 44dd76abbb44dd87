#!/usr/bin/env bash
# Rebuild every shipped toy model from scratch (maintainers; never run by CI), run the notebooks on what it built, then ship.
#
#   bash tools/rebuild_shipped.sh /tmp/fresh-cache          # the models, then the notebooks (50 min to 2 h); logs, executed notebooks in /tmp/rebuild-runs
#   python tools/ship_models.py /tmp/fresh-cache --skip eval_ --clean   # then ship it (the script prints this line)
#   longalign-zoo --verify && git add longalign/shipped     # check the copies, commit them with the notebooks' outputs
#
# Into an empty cache, with the shipped copies hidden (LONGALIGN_SHIPPED points at an empty folder), on two processes with
# one thread each:
#  1. the models: every build of `experiments.toy_shipped_builds` (the notebooks' own calls: the zoo, 02's preference models,
#     04's SFT runs, 05's and 05a's RFT runs), each as soon as what it needs is built (tools/rebuild_shipped.py);
#  2. the notebooks at their defaults, on two lanes (00a -> 04 -> 06 beside 02 -> 03 -> 05 -> 05a), then 07 (it reads 03's
#     and 05a's tables), on what step 1 built: they may build their evaluation folders (eval_*), nothing else — a model a
#     notebook builds here is missing from the list (a copy of the notebooks' calls), and the run fails.
# Any failure stops the run (the other lane too) with a non-zero exit. Nothing may come from the shipped copies.
# Measured, the whole script into an empty cache, nothing else running (2026-12-05, two cores of an Intel Xeon with
# AVX-512): the 26 builds in 41.7 min (2502 s; their own times add up to 78.4 min: VAE 228 s -> UNet 654 s -> SFT clip-cat
# 490 s is the longest chain, the twelve RFT runs ~65 s each), the notebooks in 451 s more: 49 min in all. Every claim of
# the rebuilt nbs/toy_claims.json kept its direction and the 65 values with an interval lay inside the committed ones
# (tools/compare_claims.py, which the script runs last). The same builds took 2.7-3x as long on an AMD EPYC with AVX2 only (VAE 672 s,
# UNet 1795 s, SFT clip-cat 1397 s: about 205 min on one thread, so about 100 min on two cores; stopped by hand at 82 min).
set -euo pipefail
unset IN_TEST   # the defaults: smoke sizes would build smoke models
[ $# -ge 1 ] || { echo "usage: bash tools/rebuild_shipped.sh <empty cache folder>"; exit 2; }
cache=$(realpath -m -- "$1")
runs=$(realpath -m -- "${REBUILD_RUNS:-/tmp/rebuild-runs}")
cd "$(dirname "$0")/.."
[ -z "$(ls -A "$cache" 2>/dev/null)" ] || { echo "$cache is not empty: give an empty folder (a full rebuild)"; exit 1; }
mkdir -p "$cache" "$runs"
rm -rf "$runs"/*.log "$runs/builds"   # the checks at the end read every log here
hidden=$(mktemp -d)
trap 'for p in $(jobs -p); do pkill -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; rm -rf "$hidden"' EXIT   # a failed lane stops the other
trap 'exit 143' TERM INT   # killed: the EXIT trap stops what runs (rebuild_shipped.py stops its builds on SIGTERM)
export LONGALIGN_CACHE=$cache LONGALIGN_SHIPPED=$hidden OMP_NUM_THREADS=1
start=$(date +%s)
python tools/rebuild_shipped.py "$cache" --workers 2 --logs "$runs/builds" & builds=$!
wait "$builds" || { echo "a build failed (its log is named above): nothing to ship"; exit 1; }
models=$(( $(date +%s) - start ))
echo "the shipped models rebuilt in $models s"
run() {
  local t0; t0=$(date +%s)
  papermill -k python3 "nbs/$1.ipynb" "$runs/$1.ipynb" --cwd nbs > "$runs/$1.log" 2>&1 || { echo "$1 failed: $runs/$1.log"; return 1; }
  echo "$1 done in $(( $(date +%s) - t0 )) s"
}
(run 00a_toyworld && run 04_sft && run 06_eval) &
(run 02_denscore && run 03_decomposition && run 05_rft && run 05a_rft_limits) &
wait -n || { echo "a notebook lane failed: nothing to ship"; exit 1; }   # whichever ends first: a failure stops the other
wait -n || { echo "a notebook lane failed: nothing to ship"; exit 1; }
run 07_tables
# nothing may come from the shipped copies (a notebook that unset LONGALIGN_SHIPPED would load them): grep finds none = 1
set +e; grep -rlF "using the copy shipped with the package ($cache/" "$runs"/*.log "$runs/builds"; found=$?; set -e
[ "$found" -eq 1 ] || { echo "the logs above loaded shipped copies (or could not be read): not a rebuild from scratch, nothing to ship"; exit 1; }
# the notebooks build their evaluation folders only: any other entry they build is missing from toy_shipped_builds
set +e; built=$(grep -hF "building toy-world entry" "$runs"/*.log); found=$?; set -e
[ "$found" -le 1 ] || { echo "the notebooks' logs could not be read: nothing to ship"; exit 1; }
extra=$(printf '%s\n' "$built" | grep -F "$cache/" | grep -vF "building toy-world entry eval_" || true)
[ -z "$extra" ] || { echo "$extra"; echo "the notebooks built the models above, which toy_shipped_builds lacks: add them to it"; exit 1; }
echo "models $models s, notebooks $(( $(date +%s) - start - models )) s: rebuilt in $(( $(date +%s) - start )) s"
# does the rebuild reproduce the committed claims? 07 rewrote nbs/toy_claims.json; the table goes beside the logs
set +e; python tools/compare_claims.py <(git show HEAD:nbs/toy_claims.json) nbs/toy_claims.json > "$runs/claims_vs_committed.md"; rc=$?; set -e
case $rc in
  0) tail -n 1 "$runs/claims_vs_committed.md" ;;
  1) tail -n 1 "$runs/claims_vs_committed.md"; echo "a claim's direction flips against the committed table: read $runs/claims_vs_committed.md before shipping" ;;
  *) echo "the rebuilt claims could not be compared with the committed ones (the message above): compare them before shipping" ;;
esac
echo "ship it with: python tools/ship_models.py $cache --skip eval_ --clean"
