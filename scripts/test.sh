#!/usr/bin/env bash
# The project's test command: shellcheck, rustfmt and clippy, the fuzz targets
# run for a minute, unit and property tests of every crate (the etcd store's run
# against etcd processes they start; TAPESTRY_SKIP_ETCD_TESTS=1 skips those
# explicitly), then the end-to-end lab checks (as root: real namespaces, TAPs,
# ping and curl).
# Installs what it needs (Debian packages with apt-get, crates with cargo).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$REPO/scripts/lib.sh"

ensure_packages() {
    ensure_commands "${LAB_COMMANDS[@]}" "${ETCD_COMMANDS[@]}" shellcheck:shellcheck tshark:tshark c++:g++
}

ensure_packages
echo "==> shellcheck"
shellcheck scripts/*.sh .ci/run
echo "==> cargo fmt --check, cargo clippy (warnings are errors)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# fuzz/ is outside the workspace (libfuzzer-sys would build into everything):
# its targets are linted here, then built with coverage instrumentation on the
# stable toolchain and each run for a bounded time (scripts/fuzz.sh; FUZZ_SECONDS,
# default 60, is the time all of them share). A crash fails the tests and prints
# the input that reproduces it.
echo "==> the fuzz targets: clippy (warnings are errors), then fuzzed ${FUZZ_SECONDS:-60} s in all"
cargo clippy --manifest-path fuzz/Cargo.toml --bins --examples --target-dir target/fuzz-check --quiet -- -D warnings
bash scripts/fuzz.sh
echo "==> cargo test --workspace"
# Every test binary's result line is printed, then the sum over all of them,
# so the log shows how many tests ran (a run of zero tests fails).
TEST_LOG=$(mktemp)
trap 'rm -f "$TEST_LOG"' EXIT
cargo test --workspace --quiet 2>&1 | tee "$TEST_LOG" | grep -E '^(test result|running [0-9]+ test|failures:|---- )' || true
if grep -qE '^test result: FAILED' "$TEST_LOG" || ! grep -q '^test result' "$TEST_LOG"; then
    cat "$TEST_LOG"
    echo "cargo test failed" >&2
    exit 1
fi
awk '/^test result:/ { p += $4; f += $6; i += $8; n++ }
     END { printf "cargo test: %d passed, %d failed, %d ignored, in %d test binaries\n", p, f, i, n;
           if (p == 0) exit 1 }' "$TEST_LOG"
echo "==> end-to-end lab checks"
bash scripts/e2e.sh
