#!/usr/bin/env bash
# Build an OCI image archive of N layers: the busybox layer of make-image.sh at the bottom and
# N-1 tiny layers above it, layer i adding /layers/<i> (holding "i") and replacing /layers/top.
# Images of 50+ layers overflow mount(2)'s one-page overlay options; tests use 100 and 500.
#
#   scripts/make-layered-image.sh OUT.tar NAME N
set -euo pipefail
# shellcheck source=scripts/lib/oci-pack.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/oci-pack.sh"
if [[ $# -ne 3 ]] || ! [[ $3 =~ ^[0-9]+$ ]] || (($3 < 1)); then
    echo "usage: $0 OUT.tar NAME N (N >= 1)" >&2
    exit 2
fi
OUT=$1 NAME=$2 N=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/mklayers.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The bottom layer: make-image.sh's busybox image, unpacked from its archive.
bash "$(dirname "${BASH_SOURCE[0]}")/make-image.sh" "$work/base.tar" "$NAME" 2>/dev/null
mkdir -p "$work/base"
tar -xf "$work/base.tar" -C "$work/base"
base_manifest=$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$work/base/index.json")
base_layer=$(sed -n 's/.*"layers":\[{[^}]*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$work/base/blobs/sha256/$base_manifest")
blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"
cp "$work/base/blobs/sha256/$base_layer" "$blobs/"
diff_ids="\"sha256:$base_layer\""
layers="{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$base_layer\",\"size\":$(stat -c %s "$blobs/$base_layer")}"
history='{"created":"2023-11-14T22:13:20Z","created_by":"busybox"}'
for ((i = 1; i < N; i++)); do
    d=$work/l
    rm -rf "$d"
    mkdir -p "$d/layers"
    printf '%s' "$i" >"$d/layers/$i"
    printf '%s' "$i" >"$d/layers/top"
    oci_tar "$d" "$work/layer.tar" layers
    dg=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mv "$work/layer.tar" "$blobs/$dg"
    diff_ids+=",\"sha256:$dg\""
    layers+=",{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$dg\",\"size\":$(stat -c %s "$blobs/$dg")}"
    history+=",{\"created\":\"2023-11-14T22:13:20Z\",\"created_by\":\"layer $i\"}"
done
printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":['"$diff_ids"']},"history":['"$history"'],"created":"2023-11-14T22:13:20Z"}' >"$work/config.json"
cdg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
cp "$work/config.json" "$blobs/$cdg"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$cdg"'","size":'"$(stat -c %s "$work/config.json")"'},"layers":['"$layers"']}' >"$work/manifest.json"
mdg=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
cp "$work/manifest.json" "$blobs/$mdg"
tag=${NAME##*:}
[[ $tag == "$NAME" || $tag == */* ]] && tag=latest
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$mdg"'","size":'"$(stat -c %s "$work/manifest.json")"',"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"'"$NAME"'","org.opencontainers.image.ref.name":"'"$tag"'"}}]}' >"$work/oci/index.json"
oci_tar "$work/oci" "$OUT.tmp.$$" oci-layout index.json blobs
mv -f "$OUT.tmp.$$" "$OUT"
echo "make-layered-image.sh: wrote $OUT ($NAME, $N layers)" >&2
