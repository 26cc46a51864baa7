#!/usr/bin/env bash
# Install what is missing, then run every test: unit tests and the end-to-end
# suite (tests/e2e_*.rs), which starts private containerd instances and needs root.
#
#   scripts/test.sh                                  # tests the rust shim
#   RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2 scripts/test.sh   # e2e tests vs. the Go shim
#   scripts/test.sh e2e_cri                          # an e2e test file's name: run only that file
#                                                    # (tests/*.rs, tests/cri-e2e/tests/*.rs)
#   scripts/test.sh log_uri                          # other args: a test name filter for
#                                                    # `cargo test` (unit and e2e tests)
#
# Ends with `summary: N passed, N failed, N skipped`, unit and e2e tests together (an e2e test
# counts once per containerd version; a test that printed SKIPPED, or an ignored one, counts as
# skipped, never as passed). Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Arguments naming an e2e test file select files (scripts/matrix.sh's E2E); the rest filter names.
files=() filters=()
for a in "$@"; do
    if [[ -f tests/$a.rs || -f tests/cri-e2e/tests/$a.rs ]]; then files+=("$a"); else filters+=("$a"); fi
done
if ((${#files[@]})); then
    export E2E="${files[*]}"
fi

step() { echo; echo "==> $*"; }

step "checking system packages"
bash scripts/install-deps.sh

step "checking the Rust toolchain"
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
cargo --version
rustc --version

if [[ $(id -u) -ne 0 ]]; then
    echo "warning: not root: the end-to-end tests will fail (set RUSTSHIM_ALLOW_SKIP=1 to skip them)" >&2
fi

step "versions: $(containerd --version | head -1); $(runc --version | head -1)"
echo "runtime under test: ${RUSTSHIM_TEST_RUNTIME:-io.containerd.rustshim.v2}"

step "building (cargo build --all-targets; the CRI test crate tests/cri-e2e)"
cargo build --all-targets
cargo build -p rustshim-cri-e2e --all-targets

step "a second OCI runtime for the BinaryName tests (scripts/install-youki.sh)"
bash scripts/install-youki.sh

step "a CRIU that can dump on this kernel, for the checkpoint tests (scripts/install-criu.sh)"
criu=$(bash scripts/install-criu.sh)
"$criu" check || echo "warning: $criu check failed: the checkpoint tests will fail or skip" >&2
export RUSTSHIM_CRIU=$criu

step "unit tests"
rm -rf target/tmp/e2e-logs
start=$(date +%s)
status=0
mkdir -p target/tmp
unit_log=target/tmp/unit.log
cargo test --lib --bins -- --test-threads=2 "${filters[@]}" 2>&1 | tee "$unit_log" || status=$?
# libtest's `test result:` lines: passed, failed, ignored; SKIPPED lines name tests that passed
# without testing anything.
read -r u_pass u_fail u_ign < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$unit_log" |
    awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}')
u_skip=$(grep -c 'SKIPPED: ' "$unit_log" || true)
u_pass=$((u_pass - u_skip)) u_skip=$((u_skip + u_ign))
echo "unit: $u_pass passed, $u_fail failed, $u_skip skipped"

step "end-to-end tests on containerd 1.6, 1.7 and 2.1 (scripts/matrix.sh)"
rm -f target/tmp/matrix/counts
bash scripts/matrix.sh -- "${filters[@]}" || status=$?
read -r e_pass e_fail e_skip < <(cat target/tmp/matrix/counts 2>/dev/null || echo 0 0 0)
echo
echo "unit: $u_pass passed, $u_fail failed, $u_skip skipped"
echo "e2e:  $e_pass passed, $e_fail failed, $e_skip skipped (test x containerd version)"
if ((status == 0 && u_skip + e_skip == 0)); then
    echo "==> all tests passed ($(($(date +%s) - start))s)"
elif ((status == 0)); then
    echo "==> no test failed, $((u_skip + e_skip)) skipped: see the SKIPPED lines ($(($(date +%s) - start))s)"
else
    echo "==> TESTS FAILED; containerd logs of failed e2e tests are in target/tmp/e2e-logs/" >&2
fi
if ((u_pass + u_fail + u_skip + e_pass + e_fail + e_skip == 0)); then
    echo "==> no test ran: nothing matched ${*:-(no arguments)}" >&2
    status=1
fi
echo "summary: $((u_pass + e_pass)) passed, $((u_fail + e_fail)) failed, $((u_skip + e_skip)) skipped"
exit "$status"
