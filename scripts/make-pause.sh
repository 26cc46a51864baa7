#!/usr/bin/env bash
# Build the project's pause program (deploy/pause/pause.c, static) and pack it
# into an OCI image archive, the CRI sandbox ("infra") image of a pod.
#
#   scripts/make-pause.sh OUT.tar [NAME]
#
# NAME defaults to localhost/rustshim/pause:1.0. The archive has the OCI image
# layout (oci-layout, index.json, blobs/sha256/...) with one uncompressed layer
# holding /pause; the image config runs ["/pause"] as user 65535 like the
# upstream registry.k8s.io/pause image. index.json names the manifest with
# `io.containerd.image.name` = NAME, so
#   ctr -n k8s.io images import OUT.tar
# registers it under NAME; point the CRI `sandbox_image` (1.x) or
# `pinned_images.sandbox` (2.x) setting at NAME.
#
# Needs gcc and the static glibc (Debian: gcc, libc6-dev). Set PAUSE_BIN to
# pack an already built static binary instead. Same binary => byte-identical
# archive (fixed mtimes, owners, ordering).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT.tar [NAME]" >&2
    exit 2
fi
OUT=$1
NAME=${2:-localhost/rustshim/pause:1.0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/oci-pack.sh
source "$REPO/scripts/lib/oci-pack.sh"
SRC=$REPO/deploy/pause/pause.c

work=$(mktemp -d "${TMPDIR:-/tmp}/mkpause.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- the binary --------------------------------------------------------------
if [[ -n ${PAUSE_BIN:-} ]]; then
    bin=$PAUSE_BIN
else
    if ! command -v gcc >/dev/null; then
        echo "make-pause.sh: gcc not found (apt-get install gcc libc6-dev)" >&2
        exit 1
    fi
    if [[ ! -e $(gcc -print-file-name=libc.a) || $(gcc -print-file-name=libc.a) == libc.a ]]; then
        echo "make-pause.sh: static libc (libc.a) not found (apt-get install libc6-dev)" >&2
        exit 1
    fi
    bin=$work/pause.bin
    gcc -static -Os -s -Wall -Wextra -Werror -o "$bin" "$SRC"
fi
if LC_ALL=C ldd "$bin" 2>/dev/null | grep -q '=>'; then
    echo "make-pause.sh: $bin is dynamically linked; it would not run in an empty rootfs" >&2
    exit 1
fi

# ---- rootfs and image -------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root"
chmod 0755 "$root"
install -m 0755 "$bin" "$root/pause"
oci_pack "$root" "$OUT" "$NAME" '{"User":"65535:65535","Env":["PATH=/"],"Entrypoint":["/pause"],"WorkingDir":"/"}' "rustshim scripts/make-pause.sh"
echo "make-pause.sh: wrote $OUT ($NAME, manifest $OCI_MANIFEST_DIGEST)" >&2
