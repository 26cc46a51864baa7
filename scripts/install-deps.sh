#!/usr/bin/env bash
# Install the Debian packages rustshim's build and end-to-end tests need, but
# only those that are missing (quiet and without apt-get update when nothing is).
# Also makes sure a Rust toolchain (cargo) is reachable.
#
#   scripts/install-deps.sh          # used by scripts/setup.sh and scripts/test.sh
set -euo pipefail

PACKAGES=(
    containerd          # containerd + ctr (1.6 on Debian 12)
    runc                # OCI runtime the shim drives
    busybox-static      # the test image is built from /bin/busybox
    protobuf-compiler   # protoc, for crates that generate code at build time
    build-essential     # cc/ld for cargo
    pkg-config
    util-linux          # umount, mount
    bsdutils            # script(1): gives ctr a pty in the TTY tests
    procps              # kill, ps
    erofs-utils         # mkfs.erofs: EROFS images for the loop-mount tests
    fuse3               # mount.fuse3: FUSE rootfs mounts
    squashfuse          # a FUSE filesystem for the FUSE mount tests
    squashfs-tools      # mksquashfs: its images
    containernetworking-plugins # CNI ptp/loopback: the user-namespace pod needs its own netns
    # build deps of the CRIU that scripts/install-criu.sh builds (bookworm's criu 3.17 cannot
    # dump on this kernel)
    libbsd-dev libcap-dev libnet1-dev libnftables-dev libnl-3-dev libprotobuf-c-dev
    protobuf-c-compiler libgnutls28-dev libprotobuf-dev python3-protobuf uuid-dev
    iptables            # CRIU locks a container's network (in its own netns) with iptables-restore
)

log() { echo "[install-deps] $*"; }

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null; then
            SUDO=(sudo)
        else
            log "missing packages: ${missing[*]}; run as root (or install sudo)" >&2
            exit 1
        fi
    fi
    log "installing missing packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "installed: ${missing[*]}"
else
    log "system packages present (${PACKAGES[*]})"
fi

for tool in containerd ctr runc busybox script umount; do
    if ! command -v "$tool" >/dev/null; then
        log "error: '$tool' still not found in PATH after installing packages" >&2
        exit 1
    fi
done

# containerd 2.1's EROFS differ needs mkfs.erofs --tar=f (erofs-utils 1.6+); bookworm has 1.5.
# Built once from Debian's source package into /var/cache/rustshim (the system copy stays).
bash "$(dirname "${BASH_SOURCE[0]}")/build-erofs-utils.sh" >/dev/null
# A user-namespace pod's containers need runc 1.2+ (idmapped mounts); bookworm has 1.1.5. Built
# once from Debian sid's source package into /var/cache/rustshim, used only through BinaryName.
bash "$(dirname "${BASH_SOURCE[0]}")/build-runc.sh" >/dev/null
