#!/usr/bin/env bash
# Refresh protos/ from upstream, verbatim, at the tag protos/MANIFEST names.
#   scripts/refresh-protos.sh            from Debian's golang-github-containerd-containerd-dev
#                                        (containerd's Go source; works with a Debian mirror only)
#   scripts/refresh-protos.sh --github   from raw.githubusercontent.com at the tag (needs GitHub,
#                                        which the project's machines cannot reach)
# The files are committed: the build never runs this. Review `git diff protos/` afterwards: a
# changed field number changes what the shim decodes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
manifest=$root/protos/MANIFEST
# The Debian version carrying the tag the MANIFEST names (trixie's containerd 1.7).
debian_version=${DEBIAN_VERSION:-1.7.24~ds1-6+deb13u1}
suite=${SUITE:-trixie}
cache=${RUSTSHIM_CACHE:-/var/cache/rustshim}

entries() { grep -v '^\s*#' "$manifest" | grep -v '^\s*$' | sed 's/ *| */|/g'; }

src=
if [[ ${1:-} == --github ]]; then
    fetch() { # repo tag path dest
        curl -fsSL "https://raw.githubusercontent.com/${1#github.com/}/$2/$3" -o "$4"
    }
else
    work=$cache/apt-$suite
    mkdir -p "$work/lists/partial" "$work/archives/partial"
    [[ -f $work/sources.list ]] || cat >"$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
SRC
    apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
              -o "Dir::Cache=$work" -o "APT::Get::List-Cleanup=0")
    apt-get "${apt_opts[@]}" update -qq >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get "${apt_opts[@]}" download \
        "golang-github-containerd-containerd-dev=$debian_version" >&2 2>/dev/null)
    dpkg -x "$tmp"/golang-github-containerd-containerd-dev_*.deb "$tmp/x"
    src=$tmp/x/usr/share/gocode/src
    fetch() { # repo tag path dest
        local tag=${debian_version%%~*}
        [[ $2 == "v$tag" ]] || { echo "MANIFEST says $2, Debian package is v$tag" >&2; exit 1; }
        cp "$src/$1/$3" "$4"
    }
fi

entries | while IFS='|' read -r local repo tag path _why; do
    mkdir -p "$(dirname "$root/protos/$local")"
    fetch "$repo" "$tag" "$path" "$root/protos/$local"
    echo "protos/$local <- $repo@$tag:$path"
done
git -C "$root" diff --stat -- protos/ || true
