#!/usr/bin/env bash
# Run the end-to-end suite (every tests/e2e_*.rs, and the CRI test in the tests/cri-e2e
# workspace member) against containerd 1.6 (bookworm), 1.7 (trixie) and 2.1 (sid), then print a
# table: test x containerd version -> pass/FAIL/skip, and a closing count.
#
#   scripts/matrix.sh                 # all three
#   MATRIX="bookworm sid" scripts/matrix.sh
#   E2E="e2e_core e2e_cri" scripts/matrix.sh  # only these test files
#   scripts/matrix.sh -- FILTER       # extra args go to the test binaries
# A test that printed `SKIPPED: <test>: <reason>` (tests/common print_skip, written to fd 2 so
# libtest's capture cannot hide it) shows `skip`, not `pass`, and counts as skipped.
# Exits non-zero when any test fails on any version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh

suites=(${MATRIX:-bookworm trixie sid})
[[ ${1:-} == -- ]] && shift
# Test files by package: the shim's own, and the CRI one (its own crate: tonic and protoc).
cri_pkg=rustshim-cri-e2e
cri_dir=tests/cri-e2e/tests
all=$(cd tests && ls e2e_*.rs | sed 's/\.rs$//'; cd "../$cri_dir" && ls e2e_*.rs | sed 's/\.rs$//')
shim_tests=() cri_tests=()
for t in ${E2E:-$all}; do
    if [[ -f tests/$t.rs ]]; then
        shim_tests+=(--test "$t")
    elif [[ -f $cri_dir/$t.rs ]]; then
        cri_tests+=(--test "$t")
    else
        echo "matrix.sh: no e2e test file $t (have: $(echo $all))" >&2
        exit 2
    fi
done
out=target/tmp/matrix
mkdir -p "$out"

declare -A version
status=0
for s in "${suites[@]}"; do
    dir=$(bash scripts/fetch-containerd.sh "$s")
    version[$s]=$("$dir/containerd" --version | awk '{print $3}')
    echo
    echo "==> e2e suite on containerd ${version[$s]} ($s, $dir)"
    : >"$out/$s.log"
    runs=()
    ((${#shim_tests[@]})) && runs+=("${shim_tests[*]}")
    ((${#cri_tests[@]})) && runs+=("-p $cri_pkg ${cri_tests[*]}")
    for r in "${runs[@]}"; do
        # shellcheck disable=SC2086  # $r is a word list built above
        if RUSTSHIM_CONTAINERD_DIR=$dir cargo test --no-fail-fast $r -- --test-threads=2 "$@" 2>&1 | tee -a "$out/$s.log"; then
            :
        else
            status=1
        fi
    done
done

# result NAME LOG: pass | FAIL | skip | ignored | - (not run)
result() {
    local r
    r=$(sed -n "s/^test $1 \.\.\. \([a-zA-Z]*\).*/\1/p" "$2" | head -1)
    if [[ $r == ok || -z $r ]] && grep -q "SKIPPED: $1: " "$2"; then
        # -z: with one test thread libtest prints the result after the SKIPPED line
        echo skip
        return
    fi
    case $r in ok) echo pass ;; FAILED) echo FAIL ;; ignored) echo ignored ;; *) echo - ;; esac
}

echo
echo "==> compatibility matrix (runtime ${RUSTSHIM_TEST_RUNTIME:-io.containerd.rustshim.v2})"
logs=()
for s in "${suites[@]}"; do logs+=("$out/$s.log"); done
names=$(sed -n 's/^test \([^ ]*\) \.\.\. .*/\1/p' "${logs[@]}" | sort -u)
printf '%-48s' "test"
for s in "${suites[@]}"; do printf ' %-14s' "${version[$s]}"; done
echo
declare -A count=([pass]=0 [FAIL]=0 [skip]=0 [ignored]=0 [-]=0)
for n in $names; do
    printf '%-48s' "$n"
    for s in "${suites[@]}"; do
        r=$(result "$n" "$out/$s.log")
        count[$r]=$((count[$r] + 1))
        printf ' %-14s' "$r"
    done
    echo
done
# For scripts/test.sh's total, and a plain closing line (ignored tests count as skipped).
skipped=$((count[skip] + count[ignored]))
echo "${count[pass]} ${count[FAIL]} $skipped" >"$out/counts"
if ((status != 0 && count[FAIL] == 0)); then
    echo "a test binary failed to build or to run: see target/tmp/matrix/*.log" >&2
fi
echo
echo "e2e: ${count[pass]} passed, ${count[FAIL]} failed, $skipped skipped"
exit "$status"
