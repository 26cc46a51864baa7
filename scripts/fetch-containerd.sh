#!/usr/bin/env bash
# Fetch containerd from a Debian suite into a cache dir, without installing it:
#   scripts/fetch-containerd.sh SUITE [CACHE]   (SUITE: bookworm | trixie | sid)
# Prints the directory holding bin/containerd, bin/ctr (usr/bin of the package).
# bookworm is the system package (apt-get install containerd); trixie and sid are unpacked
# with dpkg -x, keeping this machine's runc (newer runc needs a newer glibc).
set -euo pipefail
suite=${1:?usage: fetch-containerd.sh bookworm|trixie|sid [cache]}
cache=${2:-${RUSTSHIM_CACHE:-/var/cache/rustshim}}

if [[ $suite == bookworm ]]; then
    command -v containerd >/dev/null || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc >/dev/null
    }
    dirname "$(command -v containerd)"
    exit 0
fi

dest=$cache/containerd-$suite
if [[ -x $dest/usr/bin/containerd ]]; then
    echo "$dest/usr/bin"
    exit 0
fi
work=$cache/apt-$suite
mkdir -p "$work/lists/partial" "$work/archives/partial" "$dest"
cat >"$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Dir::Cache=$work" -o "APT::Get::List-Cleanup=0")
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$work" && apt-get "${apt_opts[@]}" download containerd >&2)
deb=$(ls "$work"/containerd_*.deb | head -1)
dpkg -x "$deb" "$dest"
"$dest/usr/bin/containerd" --version >&2
echo "$dest/usr/bin"
