#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ with libFuzzer's coverage instrumentation on
# the stable toolchain (no nightly, no cargo-fuzz) and runs each for a bounded
# time from its checked-in seeds (fuzz/seeds/TARGET) and the corpus earlier runs
# grew (target/fuzz/corpus/TARGET). Fails on a crash, a timeout or an
# uninstrumented build, printing the input that reproduces it.
#
# Usage: scripts/fuzz.sh [TARGET...]     (every target of fuzz/Cargo.toml by default)
#   FUZZ_SECONDS   time shared by the targets run (default 60, at least 5 each)
# Reproduce a failure: target/fuzz/<host>/release/TARGET ARTIFACT
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

TOTAL=${FUZZ_SECONDS:-60}
OUT=target/fuzz
HOST=$(rustc -vV | sed -n 's/^host: //p')

# What cargo-fuzz passes to rustc, minus the sanitizer (`-Zsanitizer` is
# nightly-only): SanitizerCoverage's inline 8-bit edge counters and PC table
# (libFuzzer's `cov:` and `ft:`), comparison tracing (libFuzzer's value profile
# and its dictionary of compared constants), `--cfg fuzzing`, and debug
# assertions and overflow checks on. `--target` keeps the flags off build
# scripts and proc macros, which libFuzzer does not link.
RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module"
for arg in -sanitizer-coverage-level=3 -sanitizer-coverage-inline-8bit-counters \
    -sanitizer-coverage-pc-table -sanitizer-coverage-trace-compares; do
    RUSTFLAGS+=" -Cllvm-args=$arg"
done
RUSTFLAGS+=" -Cdebug-assertions -Coverflow-checks"
export RUSTFLAGS

# The `name` of every [[bin]] section of fuzz/Cargo.toml.
mapfile -t ALL < <(awk '/^\[\[bin\]\]/ { bin = 1; next } /^\[/ { bin = 0 }
    bin && /^name *=/ { sub(/^name *= *"/, ""); sub(/".*/, ""); print }' fuzz/Cargo.toml)
if [ "${#ALL[@]}" -eq 0 ]; then
    echo "fuzz: no [[bin]] targets found in fuzz/Cargo.toml" >&2
    exit 1
fi
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL[@]}")
BINS=()
for t in "${TARGETS[@]}"; do
    BINS+=(--bin "$t")
done

start=$SECONDS
cargo build --release --quiet --manifest-path fuzz/Cargo.toml --target "$HOST" \
    --target-dir "$OUT" "${BINS[@]}"
echo "fuzz: built ${#TARGETS[@]} targets in $((SECONDS - start)) s (${OUT}/${HOST}/release)"

EACH=$((TOTAL / ${#TARGETS[@]}))
[ "$EACH" -ge 5 ] || EACH=5

# "cov: 12 ft: 34 corp: 5/..." of a libFuzzer status line, as "12 34 5".
counts() {
    sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 \2 \3/'
}

failed=()
mkdir -p "$OUT/logs"
for t in "${TARGETS[@]}"; do
    bin="$OUT/$HOST/release/$t"
    corpus="$OUT/corpus/$t"
    artifacts="$OUT/artifacts/$t/"
    log="$OUT/logs/$t.log"
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
    # -timeout: an input running 10 s is a hang; -close_fd_mask=1 keeps the
    # targets' stdout out of the log (panics and libFuzzer's report are stderr).
    status=0
    "$bin" -max_total_time="$EACH" -timeout=10 -rss_limit_mb=2048 -close_fd_mask=1 \
        -print_final_stats=1 -artifact_prefix="$artifacts" "${dirs[@]}" >"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo "fuzz: $t FAILED (exit $status); log $log" >&2
        if [ -n "$reproducer" ]; then
            echo "fuzz: $t reproducer: $reproducer (run: $bin $reproducer)" >&2
        fi
        failed+=("$t")
        continue
    fi
    inited=$(grep -m 1 'INITED' "$log" | counts || true)
    done_line=$(grep 'DONE' "$log" | tail -n 1 | counts || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    read -r cov0 ft0 _ <<<"${inited:-0 0 0}"
    read -r cov1 ft1 corp1 <<<"${done_line:-0 0 0}"
    echo "fuzz: $t: ${EACH} s, ${runs:-0} runs (${rate:-0}/s), cov ${cov0} -> ${cov1}, ft ${ft0} -> ${ft1}, corpus ${corp1} inputs, no crash"
    # A build without the instrumentation runs but finds nothing: fail on it.
    if [ "${cov1:-0}" -eq 0 ] || grep -q 'Is the code instrumented' "$log"; then
        echo "fuzz: $t reports no coverage: is the build instrumented? log $log" >&2
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets, no crash ($((SECONDS - start)) s with the build)"
