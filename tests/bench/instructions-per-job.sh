#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Instructions per job through the daemon, counted by cachegrind: a measure
# of the request path's cost that this shared 2-vCPU machine's noise does
# not move (wall-clock runs vary by ±15 %). Counts user-space instructions
# of the whole accel-bench process (driver, daemon, engine), not the
# kernel's; each figure is (Ir of a 6 s run - Ir of a 2 s run) / (jobs of
# the 6 s run - jobs of the 2 s run), which leaves out start-up, and the
# median of --reps such pairs.
#
#   tests/bench/instructions-per-job.sh [--reps N] OP SIZE BINARY...
#
# BINARY: accel-bench builds to compare (for example of two commits, built
# with CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1,
# so that inlining depends less on the change). Needs valgrind.
set -euo pipefail

reps=3
if [[ "${1:-}" == --reps ]]; then
    reps="$2"
    shift 2
fi
if (($# < 3)); then
    echo "usage: $0 [--reps N] OP SIZE BINARY..." >&2
    exit 2
fi
op="$1" size="$2"
shift 2
command -v valgrind >/dev/null || { echo "$0: valgrind is not installed" >&2; exit 1; }

# Prints "INSTRUCTIONS JOBS" of one run of BINARY for SECONDS.
run() {
    local binary="$1" seconds="$2" log
    log=$(mktemp)
    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$binary" \
        --daemon-only --ops "$op" --sizes "$size" --seconds "$seconds" --rounds 1 >"$log" 2>&1
    local ir jobs_per_sec
    ir=$(sed -n 's/.*I *refs: *//p' "$log" | tr -d ,)
    jobs_per_sec=$(awk -v op="$op" '$1 == op { print $4 }' "$log")
    rm -f "$log"
    if [[ -z "$ir" || -z "$jobs_per_sec" ]]; then
        echo "$0: no figures from $binary" >&2
        exit 1
    fi
    echo "$ir $(awk -v r="$jobs_per_sec" -v s="$seconds" 'BEGIN { print r * s }')"
}

for binary in "$@"; do
    per_job=()
    for ((rep = 0; rep < reps; rep++)); do
        short=$(run "$binary" 2)
        long=$(run "$binary" 6)
        read -r ir_short jobs_short <<<"$short"
        read -r ir_long jobs_long <<<"$long"
        per_job+=("$(awk -v a="$ir_short" -v b="$ir_long" -v j="$jobs_short" -v k="$jobs_long" \
            'BEGIN { printf "%.0f", (b - a) / (k - j) }')")
    done
    median=$(printf '%s\n' "${per_job[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    echo "$op $size $binary: $median instructions per job (runs: ${per_job[*]})"
done
