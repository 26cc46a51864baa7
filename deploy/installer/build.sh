#!/usr/bin/env bash
# Build (and optionally push) the rustshim installer image.
#   deploy/installer/build.sh IMAGE [--push]
# e.g. deploy/installer/build.sh registry.example.com/rustshim-installer:0.1.0 --push
# Uses $DOCKER (default: docker, else podman). Builds the release shim first.
set -euo pipefail
image=${1:?usage: build.sh IMAGE [--push]}
push=${2:-}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
docker=${DOCKER:-$(command -v docker || command -v podman || true)}
[[ -n $docker ]] || { echo "build.sh: neither docker nor podman found (set DOCKER)" >&2; exit 1; }

(cd "$repo" && cargo build --release)
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$repo/deploy/installer/Dockerfile" "$ctx/"
cp "$repo/target/release/containerd-shim-rustshim-v2" "$repo/deploy/install-node.sh" "$ctx/"
"$docker" build -t "$image" "$ctx"
if [[ $push == --push ]]; then
    "$docker" push "$image"
fi
echo "built $image; set it in deploy/kubernetes/rustshim-installer.yaml"
