#!/usr/bin/env bash
# Build mkfs.erofs from Debian trixie's erofs-utils source package into a cache dir, without
# installing it: containerd 2.1's EROFS differ runs `mkfs.erofs --tar=f`, which bookworm's
# erofs-utils 1.5 lacks (added in 1.6). The system erofs-utils stays as it is.
#   scripts/build-erofs-utils.sh [CACHE]   prints the directory holding mkfs.erofs
set -euo pipefail
cache=${1:-${RUSTSHIM_CACHE:-/var/cache/rustshim}}
dest=$cache/erofs-utils
if [[ -x $dest/bin/mkfs.erofs ]]; then
    echo "$dest/bin"
    exit 0
fi
log() { echo "[build-erofs-utils] $*" >&2; }

# Build tools and the libraries configure needs (all from bookworm).
need=(dpkg-dev build-essential autoconf automake libtool pkg-config uuid-dev zlib1g-dev liblz4-dev)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$cache/apt-trixie-src
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/src"
cat >"$work/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Dir::Cache=$work" -o "APT::Get::List-Cleanup=0")
if ! ls -d "$work"/src/erofs-utils-*/ >/dev/null 2>&1; then
    apt-get "${apt_opts[@]}" update -qq >&2
    (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only erofs-utils >&2 &&
        dpkg-source --no-check -x erofs-utils_*.dsc >&2)
fi
srcdir=$(ls -d "$work"/src/erofs-utils-*/ | head -1)
log "building $srcdir"
build=$(mktemp -d "${TMPDIR:-/tmp}/erofs-build.XXXXXX")
trap 'rm -rf "$build"' EXIT
cp -a "$srcdir"/. "$build"
(
    cd "$build"
    ./autogen.sh >&2
    ./configure --prefix="$dest" --disable-fuse --without-selinux --without-libzstd \
        --without-libdeflate --without-qpl --without-xxhash --disable-multithreading >&2 ||
        ./configure --prefix="$dest" --disable-fuse --without-selinux >&2
    make -j2 -C lib >&2
    make -j2 -C mkfs >&2
)
mkdir -p "$dest/bin"
install -m 0755 "$build/mkfs/mkfs.erofs" "$dest/bin/mkfs.erofs"
"$dest/bin/mkfs.erofs" --version >&2 || true
echo "$dest/bin"
