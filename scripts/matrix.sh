#!/usr/bin/env bash
# Run the end-to-end suite (every tests/e2e_*.rs) against containerd 1.6 (bookworm), 1.7
# (trixie) and 2.1 (sid), then print a table: test x containerd version -> pass/fail.
#
#   scripts/matrix.sh                 # all three
#   MATRIX="bookworm sid" scripts/matrix.sh
#   E2E="e2e_core" scripts/matrix.sh  # only these test files
#   scripts/matrix.sh -- FILTER       # extra args go to the test binaries
# Exits non-zero when any test fails on any version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh

suites=(${MATRIX:-bookworm trixie sid})
[[ ${1:-} == -- ]] && shift
tests=()
for t in ${E2E:-$(cd tests && ls e2e_*.rs | sed 's/\.rs$//')}; do tests+=(--test "$t"); done
out=target/tmp/matrix
mkdir -p "$out"

declare -A version
status=0
for s in "${suites[@]}"; do
    dir=$(bash scripts/fetch-containerd.sh "$s")
    version[$s]=$("$dir/containerd" --version | awk '{print $3}')
    echo
    echo "==> e2e suite on containerd ${version[$s]} ($s, $dir)"
    if RUSTSHIM_CONTAINERD_DIR=$dir cargo test --no-fail-fast "${tests[@]}" -- --test-threads=2 "$@" 2>&1 | tee "$out/$s.log"; then
        :
    else
        status=1
    fi
done

echo
echo "==> compatibility matrix (runtime ${RUSTSHIM_TEST_RUNTIME:-io.containerd.rustshim.v2})"
logs=()
for s in "${suites[@]}"; do logs+=("$out/$s.log"); done
names=$(sed -n 's/^test \([^ ]*\) \.\.\. .*/\1/p' "${logs[@]}" | sort -u)
printf '%-48s' "test"
for s in "${suites[@]}"; do printf ' %-14s' "${version[$s]}"; done
echo
for n in $names; do
    printf '%-48s' "$n"
    for s in "${suites[@]}"; do
        r=$(sed -n "s/^test $n \.\.\. \([a-zA-Z]*\).*/\1/p" "$out/$s.log" | head -1)
        case $r in ok) r=pass ;; FAILED) r=FAIL ;; ignored) r=ignored ;; "") r=- ;; esac
        printf ' %-14s' "$r"
    done
    echo
done
exit "$status"
