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
SRC=$REPO/deploy/pause/pause.c
EPOCH=1700000000   # fixed mtime for every entry

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

# ---- layer -------------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root"
chmod 0755 "$root"
install -m 0755 "$bin" "$root/pause"
layer=$work/layer.tar
(cd "$root" && tar --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
    --mtime="@$EPOCH" --no-acls --no-xattrs --no-selinux -cf "$layer" pause)

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

# ---- config ------------------------------------------------------------------
config=$work/config.json
printf '%s' '{"architecture":"amd64","os":"linux","config":{"User":"65535:65535","Env":["PATH=/"],"Entrypoint":["/pause"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$layer_digest"'"]},"history":[{"created":"2023-11-14T22:13:20Z","created_by":"rustshim scripts/make-pause.sh"}],"created":"2023-11-14T22:13:20Z"}' >"$config"
read -r config_digest config_size < <(put_blob "$config")

# ---- manifest ----------------------------------------------------------------
manifest=$work/manifest.json
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_digest"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$layer_digest"'","size":'"$layer_size"'}]}' >"$manifest"
read -r manifest_digest manifest_size < <(put_blob "$manifest")

# ---- index + layout ----------------------------------------------------------
tag=${NAME##*:}
[[ $tag == "$NAME" || $tag == */* ]] && tag=latest
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_digest"'","size":'"$manifest_size"',"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"'"$NAME"'","org.opencontainers.image.ref.name":"'"$tag"'"}}]}' >"$work/oci/index.json"
touch -d "@$EPOCH" "$work/oci" "$work/oci/blobs" "$blobs" "$work/oci/oci-layout" "$work/oci/index.json" "$blobs"/*

tmp_out="$OUT.tmp.$$"
(cd "$work/oci" && tar --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
    --mtime="@$EPOCH" --no-acls --no-xattrs --no-selinux -cf - oci-layout index.json blobs) >"$tmp_out"
mv -f "$tmp_out" "$OUT"
echo "make-pause.sh: wrote $OUT ($NAME, manifest sha256:$manifest_digest)" >&2
