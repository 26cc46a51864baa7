#!/usr/bin/env bash
# A CRIU that can checkpoint on this kernel, built from Debian's upstream tarball into a cache dir:
#   scripts/install-criu.sh        # prints the path of the criu binary
# bookworm's criu 3.17 fails `criu check` here (vDSO); 4.x from trixie/sid works. The system's
# criu is never replaced: the shim is pointed at this binary (runc's --criu; see README, CRIU).
# Only the .orig tarball is used (a suite's .debian.tar.xz may not be served), fetched through a
# private sources list (the system's apt sources are not touched) and built with bookworm's
# build deps (scripts/install-deps.sh installs them). `make criu` takes 1-2 minutes, once.
#   CRIU_SUITE=trixie scripts/install-criu.sh     # another suite (default sid)
set -euo pipefail
suite=${CRIU_SUITE:-sid}
cache=${RUSTSHIM_CACHE:-/var/cache/rustshim}
log() { echo "[install-criu] $*" >&2; }

# A build already cached (any version) is used as is: no network needed.
cached=$(ls -d "$cache"/criu-*/bin/criu 2>/dev/null | sort -V | tail -1 || true)
if [[ -n $cached && -x $cached ]]; then
    echo "$cached"
    exit 0
fi

work=$cache/apt-criu-$suite
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/src"
cat >"$work/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
SRC
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
          -o "Dir::Cache=$work" -o "APT::Get::List-Cleanup=0")
log "fetching criu's source from $suite"
apt-get "${apt_opts[@]}" update -qq >&2
# --download-only fetches .dsc, .orig and .debian; only the .orig is needed, so a missing
# .debian.tar.xz is not fatal as long as the .orig arrived.
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "criu/$suite" >&2) || true
orig=$(ls "$work"/src/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
[[ -n $orig ]] || { log "error: no criu .orig tarball from $suite"; exit 1; }
ver=$(basename "$orig"); ver=${ver#criu_}; ver=${ver%.orig.tar.*}

dest=$cache/criu-$ver
build=$work/build-$ver
rm -rf "$build" && mkdir -p "$build"
tar -xf "$orig" -C "$build" --strip-components=1
log "building criu $ver (make criu, 1-2 minutes)"
# The docs and the plugins need tools not installed here; only the binary is needed.
make -C "$build" -j"$(nproc)" criu >"$work/build-$ver.log" 2>&1 || {
    tail -30 "$work/build-$ver.log" >&2
    log "error: make criu failed (log: $work/build-$ver.log)"
    exit 1
}
mkdir -p "$dest/bin"
install -m 0755 "$build/criu/criu" "$dest/bin/criu.tmp"
mv "$dest/bin/criu.tmp" "$dest/bin/criu"
rm -rf "$build"
log "built $dest/bin/criu: $("$dest/bin/criu" --version | tr '\n' ' ')"
echo "$dest/bin/criu"
