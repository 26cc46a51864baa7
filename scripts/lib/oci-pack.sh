# Sourced by make-image.sh and make-pause.sh: pack a root filesystem into a deterministic OCI
# image archive (oci-layout, index.json, blobs/sha256/...) with one uncompressed layer.
#
#   oci_pack ROOTFS OUT NAME CONFIG CREATED_BY
# CONFIG is the image config's "config" object as JSON (Env, Cmd/Entrypoint, User, ...).
# index.json names the manifest with io.containerd.image.name = NAME (what `ctr images import`
# registers) and org.opencontainers.image.ref.name = NAME's tag. Fixed mtimes, owners and
# ordering: the same rootfs gives a byte-identical archive.

OCI_EPOCH=1700000000

oci_tar() { # DIR OUT ENTRY... : a reproducible tar of ENTRIES under DIR
    local dir=$1 out=$2
    shift 2
    (cd "$dir" && tar --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
        --mtime="@$OCI_EPOCH" --no-acls --no-xattrs --no-selinux -cf - "$@") >"$out"
}

oci_pack() {
    local rootfs=$1 out=$2 name=$3 config=$4 created_by=$5
    local work blobs tag
    work=$(mktemp -d "${TMPDIR:-/tmp}/ocipack.XXXXXX")
    blobs=$work/oci/blobs/sha256
    mkdir -p "$blobs"
    put_blob() { # file -> prints "digest size"; copies into blobs/
        local d s
        d=$(sha256sum "$1" | cut -d' ' -f1)
        s=$(stat -c %s "$1")
        cp "$1" "$blobs/$d"
        echo "$d $s"
    }
    local entries
    mapfile -t entries < <(cd "$rootfs" && ls -A)
    oci_tar "$rootfs" "$work/layer.tar" "${entries[@]}"
    local layer_digest layer_size config_digest config_size manifest_digest manifest_size
    read -r layer_digest layer_size < <(put_blob "$work/layer.tar")
    printf '%s' '{"architecture":"amd64","os":"linux","config":'"$config"',"rootfs":{"type":"layers","diff_ids":["sha256:'"$layer_digest"'"]},"history":[{"created":"2023-11-14T22:13:20Z","created_by":"'"$created_by"'"}],"created":"2023-11-14T22:13:20Z"}' >"$work/config.json"
    read -r config_digest config_size < <(put_blob "$work/config.json")
    printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config_digest"'","size":'"$config_size"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$layer_digest"'","size":'"$layer_size"'}]}' >"$work/manifest.json"
    read -r manifest_digest manifest_size < <(put_blob "$work/manifest.json")
    tag=${name##*:}
    [[ $tag == "$name" || $tag == */* ]] && tag=latest
    printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
    printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest_digest"'","size":'"$manifest_size"',"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"'"$name"'","org.opencontainers.image.ref.name":"'"$tag"'"}}]}' >"$work/oci/index.json"
    touch -d "@$OCI_EPOCH" "$work/oci" "$work/oci/blobs" "$blobs" "$work/oci/oci-layout" "$work/oci/index.json" "$blobs"/*
    oci_tar "$work/oci" "$out.tmp.$$" oci-layout index.json blobs
    mv -f "$out.tmp.$$" "$out"
    rm -rf "$work"
    OCI_MANIFEST_DIGEST=sha256:$manifest_digest
}
