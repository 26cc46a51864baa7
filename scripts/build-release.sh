#!/usr/bin/env bash
# Build the release shim as a static, non-PIE executable: target/release/containerd-shim-rustshim-v2.
# - non-PIE: a position-independent binary has ld.so patch ~9k pointers at start-up, which makes
#   ~176 kB of relocated read-only data private to every shim; a non-PIE one shares it.
# - static glibc: no libc.so/ld.so mappings (~1.3 MB of RSS per process) and only the libc code
#   the shim calls. The shim resolves no users or hosts, so glibc's NSS caveats do not apply.
# - function layout: scripts/layout/symbol-order.txt (made by scripts/profile-layout.sh) puts the
#   functions an idle shim has run first, together. The kernel maps a file's pages 64 KiB around
#   each fault, so hot code scattered over the text maps nearly all of it; packed, ~1.0 of 1.7 MB.
#   An entry that no longer names a symbol is skipped: a stale file costs memory, never breaks.
#   RUSTSHIM_SYMBOL_ORDER=other-file, or =none for the linker's own order.
# - stripped after linking, not by cargo: the profile's `strip` is part of the hash cargo puts in
#   every symbol name, so the order file only matches a build with strip = false. The unstripped
#   binary is kept beside it as containerd-shim-rustshim-v2.unstripped (symbols for perf, gdb).
# The flags must reach only the final binary (proc-macro crates need PIC and a dynamic libc),
# hence `cargo rustc` rather than RUSTFLAGS. scripts/bench measured the differences.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
order=${RUSTSHIM_SYMBOL_ORDER:-scripts/layout/symbol-order.txt}
flags=(-C relocation-model=static -C target-feature=+crt-static)
if [[ $order != none ]]; then
    [[ -f $order ]] || { echo "build-release.sh: $order not found (RUSTSHIM_SYMBOL_ORDER=none to build without)" >&2; exit 1; }
    flags+=(-C "link-arg=-Wl,--symbol-ordering-file=$(realpath "$order")" -C link-arg=-Wl,--no-warn-symbol-ordering)
fi
CARGO_PROFILE_RELEASE_STRIP=false cargo rustc --release --bin containerd-shim-rustshim-v2 "$@" -- "${flags[@]}"
bin=${CARGO_TARGET_DIR:-target}/release/containerd-shim-rustshim-v2
# cargo relinks the binary only when something changed; an already stripped one is this build's.
if readelf -S "$bin" | grep -q '\.symtab'; then
    cp -f "$bin" "$bin.unstripped"
    strip --strip-all -o "$bin.tmp" "$bin"
    mv -f "$bin.tmp" "$bin"
fi
