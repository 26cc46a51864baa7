#!/usr/bin/env bash
# Fuzz what the shim decodes from the outside (fuzz/fuzz_targets/decode.rs):
# Task API requests, ttrpc frames/envelopes, runtime options (Any, CRI TOML)
# and argv, for a bounded time, and report how many inputs were tried.
#
#   scripts/fuzz.sh              # 60 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh
#   FUZZ_ARGS="-jobs=2 -workers=2" scripts/fuzz.sh   # extra libFuzzer flags
#
# Needs cargo-fuzz (installed from crates.io when missing) and a nightly
# toolchain; with only stable available it uses RUSTC_BOOTSTRAP=1, which
# cargo-fuzz's -Z flags accept. Crashes land in fuzz/artifacts/decode/ and
# make this script exit non-zero; the corpus grows in fuzz/corpus/decode/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh

SECONDS_BUDGET=${FUZZ_SECONDS:-60}
TARGET=decode

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

toolchain=()
env_prefix=()
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
    toolchain=(+nightly)
elif command -v rustup >/dev/null 2>&1 && rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "==> no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1"
    env_prefix=(env RUSTC_BOOTSTRAP=1)
fi

corpus=fuzz/corpus/$TARGET
mkdir -p "$corpus"
if [[ -z $(ls -A "$corpus") ]]; then
    # a few valid seeds: selector byte, then the message
    printf '\x00\x0a\x02c1' >"$corpus/state"                            # State{id:c1}
    printf '\x08\x0a\x02c1\x18\x09' >"$corpus/kill"                     # Kill{id:c1,signal:9}
    printf '\x09\x0a\x02c1\x12\x02e1' >"$corpus/exec"                   # Exec{id:c1,exec_id:e1}
    printf '\x01\x0a\x02c1\x12\x07/bundle' >"$corpus/create"            # Create{id,bundle}
    printf '\x13\x0a\x1acontainerd.runc.v1.Options\x12\x06\x32\x04crun' >"$corpus/options"
    printf '\x15BinaryName = "crun"\nSystemdCgroup = true\n' >"$corpus/toml"
    printf '\x16-namespace\x00k8s.io\x00-id\x00c1\x00-address\x00/run/c.sock\x00start' >"$corpus/argv"
    # a ttrpc frame: State request on stream 1
    req=$'\x0a\x17containerd.task.v2.Task\x12\x05State\x1a\x04\x0a\x02c1'
    printf '\x11\x00\x00\x00\x26\x00\x00\x00\x01\x01\x00%s' "$req" >"$corpus/frame"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "==> cargo ${toolchain[*]} fuzz run $TARGET for ${SECONDS_BUDGET}s"
set +e
# shellcheck disable=SC2086  # FUZZ_ARGS is a list of flags
"${env_prefix[@]}" cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$TARGET" "$corpus" -- \
    -max_total_time="$SECONDS_BUDGET" -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} \
    2>&1 | tee "$log" | grep --line-buffered -E '^#[0-9]+[[:space:]]+(INITED|DONE|pulse)|Done |ERROR|panicked|SUMMARY|artifact'
status=${PIPESTATUS[0]}
set -e

runs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+' || true)
execs_s=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
echo
echo "FUZZ: target=$TARGET seconds=$SECONDS_BUDGET runs=${runs:-?} execs/s=${execs_s:-?} coverage=${cov:-?} corpus=$(ls "$corpus" | wc -l) status=$status"
if ((status != 0)); then
    echo "fuzzing found a problem: see fuzz/artifacts/$TARGET/ and the output above" >&2
fi
exit "$status"
