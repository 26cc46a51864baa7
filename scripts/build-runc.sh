#!/usr/bin/env bash
# Build a runc >= 1.2 (idmapped mounts, `features` with mountExtensions.idmap: what containerd 2.x
# requires to start a container of a user-namespace pod) from Debian sid's source package, into a
# cache dir. bookworm's runc 1.1.5 stays the system runc; only tests that ask for this one get it
# (through the runtime options' BinaryName). Nothing is installed over the system:
# - the Go toolchain and the Go libraries runc's Debian build uses (golang-*-dev, source only)
#   are Debian .debs from sid unpacked with dpkg -x under the cache dir;
# - it is built in GOPATH mode like Debian's dh-golang, with cgo against bookworm's libseccomp,
#   so the binary runs on bookworm (sid's own runc binary needs a newer glibc).
#   scripts/build-runc.sh [CACHE]    prints the path of the runc binary
set -euo pipefail
cache=${1:-${RUSTSHIM_CACHE:-/var/cache/rustshim}}
dest=$cache/runc-sid
if [[ -x $dest/bin/runc ]]; then
    echo "$dest/bin/runc"
    exit 0
fi
log() { echo "[build-runc] $*" >&2; }
for p in dpkg-dev libseccomp-dev pkg-config gcc; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        log "installing $p"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null
    fi
done
work=$cache/apt-sid-src
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/src" "$work/debs"
cat >"$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Dir::Cache=$work" -o "APT::Get::List-Cleanup=0" -o "Dir::State::status=/dev/null")
[[ -n $(ls "$work/lists" 2>/dev/null | grep -v partial) ]] || apt-get "${apt_opts[@]}" update -qq >&2
if ! ls -d "$work"/src/runc-*/ >/dev/null 2>&1; then
    (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only runc >&2 &&
        dpkg-source --no-check -x runc_*.dsc >&2)
fi
srcdir=$(ls -d "$work"/src/runc-*/ | head -1)
# The Go libraries: runc's golang-* build dependencies and theirs, transitively.
bdeps=$(apt-cache "${apt_opts[@]}" showsrc runc | sed -n 's/^Build-Depends: //p' | tail -1 |
    tr ',' '\n' | sed 's/(.*//; s/\[.*//; s/|.*//; s/ //g' | grep '^golang-' | grep -v '^golang-any$')
libs=$(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
    --no-breaks --no-replaces --no-enhances $bdeps 2>/dev/null | grep -v '^ ' | grep '^golang-.*-dev$' | sort -u)
gover=$(apt-cache "${apt_opts[@]}" depends golang-go 2>/dev/null | sed -n 's/.*Depends: \(golang-1\.[0-9]*-go\).*/\1/p' | head -1)
[[ -n $gover ]] || { log "cannot find sid's Go toolchain"; exit 1; }
gosrc=${gover%-go}-src
log "Go toolchain $gover; $(echo "$libs" | wc -l) Go library packages"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download $gover $gosrc $libs >&2)
# A fresh tree each time: a lib dropped from sid must not linger.
root=$work/root
rm -rf "$root"
mkdir -p "$root"
for d in "$work"/debs/*.deb; do dpkg -x "$d" "$root"; done
ver=${gover#golang-}
goroot=$root/usr/lib/go-${ver%-go}
export GOROOT=$goroot PATH=$goroot/bin:$PATH GO111MODULE=off GOTOOLCHAIN=local
build=$(mktemp -d "${TMPDIR:-/tmp}/runc-build.XXXXXX")
trap 'rm -rf "$build"' EXIT
export GOPATH=$build/gopath:$root/usr/share/gocode GOCACHE=$build/cache
mkdir -p "$build/gopath/src/github.com/opencontainers"
cp -a "$srcdir" "$build/gopath/src/github.com/opencontainers/runc"
cd "$build/gopath/src/github.com/opencontainers/runc"
version=$(cat VERSION 2>/dev/null || echo unknown)
log "building runc $version with $(go version)"
CGO_ENABLED=1 go build -buildmode=pie -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-X main.version=$version -X main.gitCommit=debian-sid-source" -o "$build/runc" . >&2
mkdir -p "$dest/bin"
install -m 0755 "$build/runc" "$dest/bin/runc"
"$dest/bin/runc" --version >&2
echo "$dest/bin/runc"
