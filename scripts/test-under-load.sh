#!/usr/bin/env bash
# Run the whole suite (scripts/test.sh) while `stress -c N` keeps every core busy: the tests
# must not pass or fail by timing. stress is stopped (by pid) when the suite ends.
#
#   scripts/test-under-load.sh            # stress -c 2 beside scripts/test.sh
#   STRESS_CPUS=4 scripts/test-under-load.sh e2e_core
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v stress >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends stress >/dev/null
fi
stress -c "${STRESS_CPUS:-2}" >/dev/null 2>&1 &
stress_pid=$!
trap 'pkill -P "$stress_pid" 2>/dev/null; kill "$stress_pid" 2>/dev/null || true' EXIT
echo "==> stress -c ${STRESS_CPUS:-2} (pid $stress_pid) beside scripts/test.sh"
bash scripts/test.sh "$@"
