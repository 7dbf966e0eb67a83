#!/bin/bash
# Whole `myoglucose fit` jobs with the traced and the exported potential side by side (not a test).
#
#   benchmarks/bench_fit_export_ab.sh RESULTS OUT "core sorensen1985_civii" "full roy2007_exercise" ...
#
# RESULTS: a workflow results folder (its tidy tables and config.resolved.yaml); OUT: a folder for the fits' logs and
# posteriors. For each "<model> <dataset>": the fit twice per mode, alternating (traced, exported, traced, exported;
# MYOGLUCOSE_EXPORT_POTENTIAL=0 or 1), so the second pair runs with a warm compilation cache. Prints one line per
# run (wall clock of the whole command, the fit's sampling time, its gradient counts) and writes them to OUT/ab.txt.
set -euo pipefail
results=$1; out=$2; shift 2
mkdir -p "$out"
for fit in "$@"; do
  set -- $fit
  for rep in 1 2; do
    for mode in 0 1; do
      d="$out/${1}_${2}_export${mode}_rep${rep}"
      rm -rf "$d"; mkdir -p "$d"
      s=$(date +%s.%N)
      MYOGLUCOSE_EXPORT_POTENTIAL=$mode myoglucose fit --tidy-dir "$results/tidy/$2" --model "models/$1" \
        --config "$results/config.resolved.yaml" --out "$d/posterior.nc" > "$d/log" 2>&1
      e=$(date +%s.%N)
      echo "$1 $2 export=$mode rep=$rep wall_s=$(echo "$e - $s" | bc)" \
        "$(grep -o 'sampling done in [0-9.]* s' "$d/log")" \
        "$(grep -o "'gradient_evaluations': [0-9]*, 'warmup_gradient_evaluations': [0-9]*" "$d/log")" | tee -a "$out/ab.txt"
    done
  done
done
