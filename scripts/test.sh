#!/usr/bin/env bash
# Install what is missing, then run every test: unit tests and the end-to-end
# suite (tests/e2e_*.rs), which starts private containerd instances and needs root.
#
#   scripts/test.sh                                  # tests the rust shim
#   RUSTSHIM_TEST_RUNTIME=io.containerd.runc.v2 scripts/test.sh   # e2e tests vs. the Go shim
#   scripts/test.sh e2e_core                         # extra args go to `cargo test` as a filter
#
# Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

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

step "building (cargo build --all-targets)"
cargo build --all-targets

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
cargo test --lib --bins -- --test-threads=2 "$@" || status=$?

step "end-to-end tests on containerd 1.6, 1.7 and 2.1 (scripts/matrix.sh)"
bash scripts/matrix.sh -- "$@" || status=$?
echo
if ((status == 0)); then
    echo "==> all tests passed ($(($(date +%s) - start))s)"
else
    echo "==> TESTS FAILED; containerd logs of failed e2e tests are in target/tmp/e2e-logs/" >&2
fi
exit "$status"
