#!/usr/bin/env bash
# A second OCI runtime for the BinaryName tests: youki from crates.io, built with its cgroup
# features (without them it fails with "v1 cgroup feature is required"), into a cache dir.
#   scripts/install-youki.sh        # prints the path of the youki binary
# crun 1.8 from Debian refuses this host's hybrid cgroups; runc from newer suites needs a newer
# glibc: youki is the second runtime that works here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=${RUSTSHIM_CACHE:-/var/cache/rustshim}/youki
bin=$root/bin/youki
if [[ ! -x $bin ]]; then
    missing=()
    for p in libseccomp-dev libsystemd-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "[install-youki] installing ${missing[*]}" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
    # shellcheck source=scripts/cargo-env.sh
    source scripts/cargo-env.sh
    echo "[install-youki] cargo install youki 0.7.0 (a few minutes, once)" >&2
    cargo install youki --version 0.7.0 --locked --features v1,v2,systemd,seccomp --root "$root" >&2
fi
echo "$bin"
