#!/usr/bin/env bash
# Regenerate scripts/layout/symbol-order.txt: profile which functions an idle shim has run (callgrind,
# then the exact pages it touched) and pack them at the front of the release binary's text, so a
# lone idle shim maps ~1.0 MB of its 1.7 MB of code instead of all of it. Method and why:
# scripts/bench.d/layout.py. Run it after a toolchain or dependency upgrade, or when
# scripts/bench's "PSS per shim, 1 idle container" grows; ~5 min on 2 cores. Needs root: it runs a
# private containerd (namespace "layout", removed after) and sets the readahead of /tmp's block
# device to 0 for a few seconds per pass (restored on every exit path).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $(id -u) -eq 0 ]] || { echo "scripts/profile-layout.sh must run as root" >&2; exit 1; }
missing=()
for p in valgrind binutils procps containerd runc busybox-static; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "[layout] installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3
exec "$PY" scripts/bench.d/layout.py "$@"
