#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Runs every fuzz target of vhost-user-accel for a short bounded time
# (docs/fuzzing.md), from the committed seed corpus; exits non-zero on any
# crash, leak, timeout or build failure. Called by .ci/run.
#
#   fuzz/ci.sh [seconds per target]   (default 20; FUZZ_SECONDS also works)
set -euo pipefail

seconds="${1:-${FUZZ_SECONDS:-20}}"
cd "$(dirname "$0")"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The longest input each target reads in full (see each target's header).
declare -A max_len=(
    [request]=8192
    [control]=2048
    [fence]=4096
    [device]=16384
    [vhost_user]=8192
    [record]=2048
)
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -O

failed=0
for target in $targets; do
    corpus="corpus/$target"
    scratch=$(mktemp -d)
    log=$(mktemp)
    # New inputs go to a scratch corpus: the committed seeds stay as they are.
    if cargo +nightly fuzz run -O "$target" "$scratch" "$corpus" -- \
        -max_total_time="$seconds" -max_len="${max_len[$target]:-4096}" \
        -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
        cov=$(grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -1 | grep -o 'cov: [0-9]*' || true)
        echo "fuzz: $target: ok (${seconds}s, ${runs:-?} runs, ${cov:-cov: ?})"
    else
        failed=1
        echo "fuzz: $target: FAILED; the last lines of libFuzzer's output:"
        tail -n 60 "$log"
        ls artifacts/"$target"/ 2>/dev/null | sed "s|^|fuzz: $target: artifact artifacts/$target/|"
    fi
    rm -rf "$scratch" "$log"
done
exit "$failed"
