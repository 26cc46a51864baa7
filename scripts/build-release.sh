#!/usr/bin/env bash
# Build the release shim as a non-PIE executable: target/release/containerd-shim-rustshim-v2.
# A position-independent binary has ld.so patch ~9k pointers at start-up, which makes ~176 kB of
# relocated read-only data private to every shim; a non-PIE one shares it. The flag must reach
# only the final binary (proc-macro crates need PIC), hence `cargo rustc` rather than RUSTFLAGS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
cargo rustc --release --bin containerd-shim-rustshim-v2 "$@" -- -C relocation-model=static
