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
EPOCH=1700000000   # fixed mtime for every entry

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

layer=$work/layer.tar
(cd "$root" && tar --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
    --mtime="@$EPOCH" --no-acls --no-xattrs --no-selinux -cf "$layer" \
    bin dev etc proc root sys tmp)

blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"

put_blob() { # file -> prints "digest size"; copies into blobs/
    local f=$1 d s
    d=$(sha256sum "$f" | cut -d' ' -f1)
    s=$(stat -c %s "$f")
    cp "$f" "$blobs/$d"
    echo "$d $s"
}

read -r layer_digest layer_size < <(put_blob "$layer")

# ---- config --------------------------------------------------------------
config=$work/config.json
printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin:/usr/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$layer_digest"'"]},"history":[{"created":"2023-11-14T22:13:20Z","created_by":"rustshim scripts/make-image.sh"}],"created":"2023-11-14T22:13:20Z"}' >"$config"
read -r config_digest config_size < <(put_blob "$config")

# ---- manifest ------------------------------------------------------------
manifest=$work/manifest.json
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_digest"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$layer_digest"'","size":'"$layer_size"'}]}' >"$manifest"
read -r manifest_digest manifest_size < <(put_blob "$manifest")

# ---- index + layout -------------------------------------------------------
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_digest"'","size":'"$manifest_size"',"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"'"$NAME"'","org.opencontainers.image.ref.name":"latest"}}]}' >"$work/oci/index.json"
touch -d "@$EPOCH" "$work/oci" "$work/oci/blobs" "$blobs" "$work/oci/oci-layout" "$work/oci/index.json" "$blobs"/*

tmp_out="$OUT.tmp.$$"
(cd "$work/oci" && tar --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
    --mtime="@$EPOCH" --no-acls --no-xattrs --no-selinux -cf - oci-layout index.json blobs) >"$tmp_out"
mv -f "$tmp_out" "$OUT"
echo "make-image.sh: wrote $OUT ($NAME, manifest sha256:$manifest_digest)" >&2
