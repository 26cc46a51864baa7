#!/usr/bin/env bash
# Build a tiny, deterministic OCI image archive from the static busybox binary.
#
#   scripts/make-image.sh OUT.tar [NAME]
#
# The archive has the OCI image layout (oci-layout, index.json, blobs/sha256/...)
# with a single uncompressed layer holding bin/busybox and applet symlinks.
# index.json names the manifest with both `io.containerd.image.name` = NAME
# (default docker.io/library/rsbox:latest) and `org.opencontainers.image.ref.name`
# = latest, so `ctr images import OUT.tar` registers it under NAME.
#
# Same input busybox => byte-identical archive (fixed mtimes, owners, ordering).
set -euo pipefail
# shellcheck source=scripts/lib/oci-pack.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/oci-pack.sh"

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUT.tar [NAME]" >&2
    exit 2
fi
OUT=$1
NAME=${2:-docker.io/library/rsbox:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}

if [[ ! -x $BUSYBOX ]]; then
    echo "make-image.sh: $BUSYBOX not found (apt-get install busybox-static)" >&2
    exit 1
fi
# A dynamically linked busybox would not run inside the image (no libc there).
if LC_ALL=C ldd "$BUSYBOX" 2>/dev/null | grep -q '=>'; then
    echo "make-image.sh: $BUSYBOX is dynamically linked (install busybox-static)" >&2
    exit 1
fi

APPLETS=(sh echo cat sleep true false ls ps kill wc head tr yes id env seq tty stty printf
         grep touch rm mkdir)

work=$(mktemp -d "${TMPDIR:-/tmp}/mkimg.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- layer ---------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/etc" "$root/root" "$root/tmp"
chmod 0755 "$root" "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/etc"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
install -m 0755 "$BUSYBOX" "$root/bin/busybox"
for a in "${APPLETS[@]}"; do
    ln -s busybox "$root/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

oci_pack "$root" "$OUT" "$NAME" '{"Env":["PATH=/bin:/usr/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"}' "rustshim scripts/make-image.sh"
echo "make-image.sh: wrote $OUT ($NAME, manifest $OCI_MANIFEST_DIGEST)" >&2
