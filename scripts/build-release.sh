#!/usr/bin/env bash
# Build the release shim as a static, non-PIE executable: target/release/containerd-shim-rustshim-v2.
# - non-PIE: a position-independent binary has ld.so patch ~9k pointers at start-up, which makes
#   ~176 kB of relocated read-only data private to every shim; a non-PIE one shares it.
# - static glibc: no libc.so/ld.so mappings (~1.3 MB of RSS per process) and only the libc code
#   the shim calls. The shim resolves no users or hosts, so glibc's NSS caveats do not apply.
# The flags must reach only the final binary (proc-macro crates need PIC and a dynamic libc),
# hence `cargo rustc` rather than RUSTFLAGS. scripts/bench measured the difference.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
cargo rustc --release --bin containerd-shim-rustshim-v2 "$@" -- -C relocation-model=static -C target-feature=+crt-static
