#!/usr/bin/env bash
# From a fresh Debian 12 machine (as root) to a working rustshim:
#   1. install the missing system packages (containerd, runc, busybox-static, ...)
#   2. scripts/build-release.sh (cargo build --release, as a non-PIE binary)
#   3. install the shim as /usr/local/bin/containerd-shim-rustshim-v2
#   4. demo: start a PRIVATE containerd in /tmp/rustshim-demo (own config and
#      socket; the system containerd is not touched), import the busybox test
#      image and run   ctr run --rm --runtime io.containerd.rustshim.v2 ... echo
#   5. stop that containerd and clean up
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

RUNTIME=io.containerd.rustshim.v2
BIN=containerd-shim-rustshim-v2
IMAGE=docker.io/library/rsbox:latest
DEMO=/tmp/rustshim-demo
SOCK=$DEMO/c.sock
NS=rustshim-demo

step() { echo; echo "==> $*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh must run as root (containerd, runc and /usr/local/bin need it)" >&2
    exit 1
fi

step "system packages"
bash scripts/install-deps.sh
# A CRIU for checkpoint/restore (bookworm's 3.17 cannot dump on this kernel); point containerd's
# environment at it with RUSTSHIM_CRIU_PATH (README, Checkpoint and restore).
bash scripts/install-criu.sh >/dev/null

step "Rust toolchain"
# shellcheck source=scripts/cargo-env.sh
source scripts/cargo-env.sh
cargo --version

step "release build (scripts/build-release.sh)"
bash scripts/build-release.sh

step "install /usr/local/bin/$BIN"
install -m 0755 "target/release/$BIN" "/usr/local/bin/$BIN"
ls -l "/usr/local/bin/$BIN"

step "demo: private containerd in $DEMO"
demo_pid=
cleanup() {
    set +e
    if [[ -n $demo_pid ]] && kill -0 "$demo_pid" 2>/dev/null; then
        ctr -a "$SOCK" -n "$NS" task kill -s SIGKILL demo >/dev/null 2>&1
        ctr -a "$SOCK" -n "$NS" task delete demo >/dev/null 2>&1
        ctr -a "$SOCK" -n "$NS" container delete demo >/dev/null 2>&1
        kill -TERM "$demo_pid"
        for _ in $(seq 50); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$demo_pid" 2>/dev/null
        wait "$demo_pid" 2>/dev/null
    fi
    # shims this demo started (their cmdline names our socket), if any are left
    for p in $(pgrep -f "containerd-shim-.* -address $SOCK( |\$)" || true); do
        kill -KILL "$p" 2>/dev/null
    done
    # mounts under the demo dir, deepest first
    grep -o " $DEMO[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$DEMO" "/run/containerd/runc/$NS"
    # runc leaves the namespace's empty parent cgroup in each hierarchy
    for d in /sys/fs/cgroup/*/"$NS" /sys/fs/cgroup/"$NS"; do [[ -d $d ]] && rmdir "$d" 2>/dev/null; done
    return 0
}
trap cleanup EXIT

if [[ -e $DEMO ]]; then
    # leftovers of an earlier demo run: stop its containerd if it is still up
    if [[ -f $DEMO/containerd.pid ]]; then
        old=$(cat "$DEMO/containerd.pid")
        if [[ $(tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null) == *"$DEMO/config.toml"* ]]; then
            demo_pid=$old
        fi
    fi
    cleanup
    demo_pid=
fi
mkdir -p "$DEMO"
cat >"$DEMO/config.toml" <<TOML
version = 2
root = "$DEMO/root"
state = "$DEMO/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$SOCK"

[debug]
  level = "debug"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DEMO/opt"
TOML
PATH="/usr/local/bin:$PATH" containerd --config "$DEMO/config.toml" >"$DEMO/containerd.log" 2>&1 &
demo_pid=$!
echo "$demo_pid" >"$DEMO/containerd.pid"
for _ in $(seq 100); do
    ctr -a "$SOCK" version >/dev/null 2>&1 && break
    kill -0 "$demo_pid" 2>/dev/null || { tail -20 "$DEMO/containerd.log"; echo "containerd died" >&2; exit 1; }
    sleep 0.2
done
ctr -a "$SOCK" version >/dev/null || { tail -20 "$DEMO/containerd.log"; exit 1; }
echo "containerd pid $demo_pid listening on $SOCK"

step "demo: build and import the busybox image"
bash "$REPO/scripts/make-image.sh" "$DEMO/rsbox.tar" "$IMAGE"
ctr -a "$SOCK" -n "$NS" images import "$DEMO/rsbox.tar"

step "demo: ctr run --rm --runtime $RUNTIME $IMAGE demo echo \"hello from rustshim\""
ctr -a "$SOCK" -n "$NS" run --rm --runtime "$RUNTIME" "$IMAGE" demo echo "hello from rustshim"

echo
echo "shim log lines in containerd.log:"
grep -F "runtime=$RUNTIME" "$DEMO/containerd.log" | head -5 || echo "  (none)"

step "demo: stopping the private containerd and cleaning up"
cleanup
demo_pid=
trap - EXIT
echo "done: $BIN installed; use it with --runtime $RUNTIME"
