#!/usr/bin/env bash
# Reliability soak: the tests of tests/e2e_reliability.rs with soak sizes,
# repeated, against the release build of the shim (panic=abort, LTO: what
# ships). Needs root, containerd, ctr and runc, like the e2e suite.
#
#   scripts/soak.sh                                  # soak sizes, 1 round
#   SOAK_ROUNDS=5 scripts/soak.sh                    # repeat
#   SOAK_EXEC_STORM=20000 scripts/soak.sh exec_storm # one test (cargo test filter)
#   SOAK_FUZZ_SECONDS=600 scripts/soak.sh            # then scripts/fuzz.sh for 10 min
#
# Sizes (environment, defaults in brackets):
#   SOAK_CRASH_CONTAINERS [100]  containers running when containerd is SIGKILLed
#   SOAK_CRASH_EXECS      [20]   execs in flight at that moment
#   SOAK_EXEC_STORM       [5000] execs in one container ...
#   SOAK_EXEC_CONCURRENCY [16]   ... this many at a time
#   SOAK_EXIT_CONTAINERS  [1000] `ctr run --rm /bin/true`
#   SOAK_EXIT_EXECS       [1000] `ctr task exec /bin/true`
#   SOAK_FUZZ_FRAMES      [50000] mutated ttrpc frames sent to a live shim
#   SOAK_RSS_SLACK_KIB    [1024] RSS growth allowed over the exec storm
#   SOAK_ROUNDS           [1]    repetitions of the whole selection
#   SOAK_THREADS          [1]    tests run at once (1: figures not disturbed)
#   SOAK_PROFILE          [release] or "debug"
#   SOAK_FUZZ_SECONDS     [0]    >0: run scripts/fuzz.sh that long at the end
# RUSTSHIM_TEST_RUNTIME and RUSTSHIM_CONTAINERD_DIR work as for the e2e suite.
#
# Output: target/soak/<date>/ holds the full log of each round and
# report.txt with every RELIABILITY figure; the summary is printed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh

export RUSTSHIM_REL_CRASH_CONTAINERS=${SOAK_CRASH_CONTAINERS:-100}
export RUSTSHIM_REL_CRASH_EXECS=${SOAK_CRASH_EXECS:-20}
export RUSTSHIM_REL_EXEC_STORM=${SOAK_EXEC_STORM:-5000}
export RUSTSHIM_REL_EXEC_CONCURRENCY=${SOAK_EXEC_CONCURRENCY:-16}
export RUSTSHIM_REL_EXIT_CONTAINERS=${SOAK_EXIT_CONTAINERS:-1000}
export RUSTSHIM_REL_EXIT_EXECS=${SOAK_EXIT_EXECS:-1000}
export RUSTSHIM_REL_FUZZ_FRAMES=${SOAK_FUZZ_FRAMES:-50000}
export RUSTSHIM_REL_RSS_SLACK_KIB=${SOAK_RSS_SLACK_KIB:-1024}
rounds=${SOAK_ROUNDS:-1}
threads=${SOAK_THREADS:-1}
profile=${SOAK_PROFILE:-release}
fuzz_seconds=${SOAK_FUZZ_SECONDS:-0}

out=target/soak/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
export RUSTSHIM_RELIABILITY_REPORT=$PWD/$out/report.txt
: >"$RUSTSHIM_RELIABILITY_REPORT"

cargo_args=(test --test e2e_reliability)
[[ $profile == release ]] && cargo_args+=(--release)

echo "==> soak: runtime ${RUSTSHIM_TEST_RUNTIME:-io.containerd.rustshim.v2}, containerd $("${RUSTSHIM_CONTAINERD_DIR:+$RUSTSHIM_CONTAINERD_DIR/}containerd" --version | awk '{print $3}'), profile $profile"
env | grep '^RUSTSHIM_REL_' | sort | sed 's/^/    /'
echo "==> building"
cargo "${cargo_args[@]}" --no-run 2>&1 | tail -2

failed=0
start=$(date +%s)
for ((r = 1; r <= rounds; r++)); do
    echo "==> round $r/$rounds"
    echo "# round $r" >>"$RUSTSHIM_RELIABILITY_REPORT"
    t0=$(date +%s)
    if cargo "${cargo_args[@]}" -- --test-threads="$threads" "$@" >"$out/round-$r.log" 2>&1; then
        echo "    passed in $(($(date +%s) - t0))s"
    else
        failed=$((failed + 1))
        echo "    FAILED in $(($(date +%s) - t0))s (log: $out/round-$r.log)"
        grep -E '^test .* FAILED|panicked at' -A2 "$out/round-$r.log" | sed 's/^/    /' | head -40
    fi
done

fuzz_status=0
if ((fuzz_seconds > 0)); then
    echo "==> fuzzing for ${fuzz_seconds}s"
    FUZZ_SECONDS=$fuzz_seconds bash scripts/fuzz.sh >"$out/fuzz.log" 2>&1 || fuzz_status=$?
    grep '^FUZZ:' "$out/fuzz.log" | tee -a "$RUSTSHIM_RELIABILITY_REPORT"
fi

echo
echo "==> figures ($out/report.txt)"
sed 's/^RELIABILITY: //' "$RUSTSHIM_RELIABILITY_REPORT"
echo
echo "==> soak: $rounds round(s), $failed failed, fuzz status $fuzz_status, $(($(date +%s) - start))s"
((failed == 0 && fuzz_status == 0))
