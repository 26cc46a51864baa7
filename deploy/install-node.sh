#!/usr/bin/env bash
# Install rustshim on a Kubernetes node that runs containerd (1.6, 1.7 or 2.x):
#
#   1. copy the shim binary to /usr/local/bin/containerd-shim-rustshim-v2
#      (atomically: running shims keep the old file);
#   2. add the CRI runtime handler `rustshim` (runtime_type io.containerd.rustshim.v2)
#      to /etc/containerd/config.toml if it is not there yet, in the syntax of
#      the file's config version (2: containerd 1.6/1.7, 3: containerd 2.x),
#      after a backup and a `containerd config dump` check;
#   3. restart containerd (running containers and shims survive a restart) and
#      check that it and its CRI plugin come back; on failure the previous
#      config is restored and containerd restarted again.
#
# Idempotent: nothing is changed (and containerd is not restarted) when the
# same binary and the handler are already in place.
#
#   deploy/install-node.sh [options]
#     --binary PATH         shim binary to install (default: containerd-shim-rustshim-v2
#                           next to this script, else target/release/ of the repo)
#     --prefix DIR          where to install it (default /usr/local/bin)
#     --config PATH         containerd config (default /etc/containerd/config.toml)
#     --containerd PATH     containerd binary (default: from PATH)
#     --systemd-cgroup auto|true|false
#                           pass SystemdCgroup to the shim (needed when kubelet uses the
#                           systemd cgroup driver). auto (default): true when the config's
#                           runc runtime has SystemdCgroup = true
#     --no-restart          only install and edit the config
#     --dry-run             print what would change, change nothing
#
# containerd is restarted with `systemctl restart containerd` (systemd), else
# `service containerd restart`; set RUSTSHIM_RESTART_CMD to use another command.
#
# Must run as root on the node itself (the DaemonSet in
# deploy/kubernetes/rustshim-installer.yaml runs it through nsenter in the host's
# namespaces).
set -euo pipefail

NAME=containerd-shim-rustshim-v2
HANDLER=rustshim
RUNTIME_TYPE=io.containerd.rustshim.v2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

binary=
prefix=/usr/local/bin
config=/etc/containerd/config.toml
containerd_bin=
systemd_cgroup=auto
restart=1
dry_run=0

die() { echo "install-node.sh: error: $*" >&2; exit 1; }
log() { echo "install-node.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --binary) binary=${2:?}; shift 2 ;;
        --prefix) prefix=${2:?}; shift 2 ;;
        --config) config=${2:?}; shift 2 ;;
        --containerd) containerd_bin=${2:?}; shift 2 ;;
        --systemd-cgroup) systemd_cgroup=${2:?}; shift 2 ;;
        --no-restart) restart=0; shift ;;
        --dry-run) dry_run=1; restart=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case $systemd_cgroup in auto|true|false) ;; *) die "--systemd-cgroup takes auto, true or false" ;; esac
[[ $(id -u) -eq 0 || $dry_run -eq 1 ]] || die "must run as root"

# ---- the binary ---------------------------------------------------------------
if [[ -z $binary ]]; then
    for c in "$here/$NAME" "$here/../target/release/$NAME"; do
        [[ -x $c ]] && { binary=$c; break; }
    done
fi
[[ -n $binary && -x $binary ]] || die "shim binary not found (build it with cargo build --release, or pass --binary)"
"$binary" -v >/dev/null 2>&1 || die "$binary -v failed: wrong architecture or missing libraries on this node?"

if [[ -z $containerd_bin ]]; then
    containerd_bin=$(command -v containerd || true)
    [[ -n $containerd_bin ]] || die "containerd not found in PATH (pass --containerd)"
fi
ver=$("$containerd_bin" --version | awk '{print $3}')
ver=${ver#v}
major=${ver%%.*}
rest=${ver#*.}
minor=${rest%%.*}
[[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || die "cannot parse the containerd version from '$("$containerd_bin" --version)'"
if ((major < 1 || (major == 1 && minor < 6))); then
    die "containerd $ver is too old: rustshim needs 1.6 or newer"
fi
log "containerd $ver ($containerd_bin)"

changed_binary=0
dest=$prefix/$NAME
if [[ -e $dest ]] && cmp -s "$binary" "$dest"; then
    log "$dest is up to date"
elif ((dry_run)); then
    log "would install $binary as $dest"
    changed_binary=1
else
    mkdir -p "$prefix"
    install -m 0755 "$binary" "$dest.new.$$"
    mv -f "$dest.new.$$" "$dest"
    log "installed $dest ($("$dest" -v 2>/dev/null | tr -s ' \n' ' '))"
    changed_binary=1
fi

# ---- the config -----------------------------------------------------------------
dump() { "$containerd_bin" --config "$1" config dump 2>&1; }
has_handler() { grep -Eq "runtimes\\.[\"']?$HANDLER[\"']?\\]" <<<"$1"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
candidate=$work/config.toml

if [[ -f $config ]]; then
    cp "$config" "$candidate"
else
    log "$config does not exist: starting from \`containerd config default\`"
    "$containerd_bin" config default >"$candidate"
fi
cfg_version=$(sed -n 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9]\+\).*/\1/p' "$candidate" | head -1)
cfg_version=${cfg_version:-1}
case $cfg_version in
    2) plugin='"io.containerd.grpc.v1.cri"' ;;   # containerd 1.6, 1.7 (2.x migrates it)
    3) plugin='"io.containerd.cri.v1.runtime"' ;; # containerd 2.x
    *) die "$config has config version $cfg_version; run \`containerd config migrate\` (2.x) or convert it to version 2 first" ;;
esac
((cfg_version == 3 && major < 2)) && die "$config is config version 3 but containerd $ver reads only version 2"

before=$(dump "$candidate") || die "containerd cannot parse $config:
$before"
changed_config=0
if has_handler "$before"; then
    log "runtime handler '$HANDLER' already configured in $config"
else
    if [[ $systemd_cgroup == auto ]]; then
        if grep -Eq '^[[:space:]]*SystemdCgroup[[:space:]]*=[[:space:]]*true' <<<"$before"; then
            systemd_cgroup=true
        else
            systemd_cgroup=false
        fi
    fi
    {
        echo
        echo "# Added by rustshim deploy/install-node.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "[plugins.$plugin.containerd.runtimes.$HANDLER]"
        echo "  runtime_type = \"$RUNTIME_TYPE\""
        echo "  runtime_path = \"$dest\""
        ((cfg_version == 3)) && echo "  sandboxer = \"podsandbox\""
        if [[ $systemd_cgroup == true ]]; then
            # CRI passes a non-runc runtime's options table as runtimeoptions.v1.Options:
            # containerd 1.6 forwards only ConfigPath, so the runc-style options go in a file.
            opts=${config%/*}/rustshim-options.toml
            echo "  [plugins.$plugin.containerd.runtimes.$HANDLER.options]"
            echo "    ConfigPath = \"$opts\""
        fi
    } >>"$candidate"
    after=$(dump "$candidate") || die "the edited config does not parse:
$after"
    # containerd 1.6/1.7 replace the default runtimes map with the one in the file: if the
    # file had no runtimes table, the default `runc` handler must be written out too.
    default_rt=$(sed -n 's/^[[:space:]]*default_runtime_name[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' <<<"$after" | head -1)
    default_rt=${default_rt:-runc}
    if ! grep -Eq "runtimes\\.[\"']?$default_rt[\"']?\\]" <<<"$after"; then
        [[ $default_rt == runc ]] || die "default runtime '$default_rt' would disappear from the config; add the handler by hand (deploy/containerd/)"
        {
            echo "[plugins.$plugin.containerd.runtimes.runc]"
            echo "  runtime_type = \"io.containerd.runc.v2\""
            if [[ $systemd_cgroup == true ]]; then
                echo "  [plugins.$plugin.containerd.runtimes.runc.options]"
                echo "    SystemdCgroup = true"
            fi
        } >>"$candidate"
        after=$(dump "$candidate") || die "the edited config does not parse:
$after"
    fi
    has_handler "$after" || die "containerd does not see the '$HANDLER' handler in the edited config:
$(tail -20 "$candidate")"
    if ((dry_run)); then
        log "would append to $config:"
        diff <( [[ -f $config ]] && cat "$config" ) "$candidate" | sed -n 's/^> //p' >&2 || true
    else
        if [[ $systemd_cgroup == true ]]; then
            printf '# runc options for the rustshim handler (read by the shim)\nSystemdCgroup = true\n' \
                >"${config%/*}/rustshim-options.toml"
            log "wrote ${config%/*}/rustshim-options.toml (SystemdCgroup = true)"
        fi
        mkdir -p "$(dirname "$config")"
        backup=
        if [[ -f $config ]]; then
            backup=$config.rustshim-backup.$(date -u +%Y%m%d%H%M%S)
            cp -p "$config" "$backup"
            log "backup: $backup"
        fi
        cat "$candidate" >"$config.new.$$"
        mv -f "$config.new.$$" "$config"
        log "added runtime handler '$HANDLER' to $config (config version $cfg_version)"
        changed_config=1
    fi
fi

# ---- restart --------------------------------------------------------------------
if ((changed_config == 0)); then
    log "config unchanged: not restarting containerd"
    ((changed_binary)) && log "new shim binary: new pods use it, running pods keep the old one"
    exit 0
fi
if ((restart == 0)); then
    log "not restarting containerd (--no-restart): restart it to enable the handler"
    exit 0
fi

restart_cmd=
if [[ -n ${RUSTSHIM_RESTART_CMD:-} ]]; then
    restart_cmd=$RUSTSHIM_RESTART_CMD
elif [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    restart_cmd="systemctl restart containerd"
elif command -v service >/dev/null && [[ -e /etc/init.d/containerd ]]; then
    restart_cmd="service containerd restart"
fi
restart_containerd() { bash -c "$restart_cmd"; }
# 0: containerd answers and its CRI plugins (`cri`; 2.x also `cri.v1.*`) are ok,
# 1: containerd does not answer (yet), 2: it answers but CRI did not load.
cri_ready() {
    local ctr_bin sock out
    ctr_bin=$(dirname "$containerd_bin")/ctr
    [[ -x $ctr_bin ]] || ctr_bin=$(command -v ctr || true)
    [[ -n $ctr_bin ]] || return 0
    sock=$(sed -n '/^\[grpc\]/,/^\[/s/^[[:space:]]*address[[:space:]]*=[[:space:]]*["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$config" | head -1)
    sock=${sock:-/run/containerd/containerd.sock}
    out=$("$ctr_bin" -a "$sock" plugins ls 2>/dev/null) || return 1
    out=$(grep -E '[[:space:]]cri[[:space:]]|io\.containerd\.cri\.' <<<"$out" || true)
    grep -q . <<<"$out" || return 2
    grep -Evq '[[:space:]]ok[[:space:]]*$' <<<"$out" && return 2
    return 0
}
wait_ready() {
    local rc
    for _ in $(seq 60); do
        rc=0
        cri_ready || rc=$?
        ((rc == 1)) || return "$rc"
        sleep 1
    done
    return 1
}

if [[ -z $restart_cmd ]]; then
    log "cannot restart containerd (no systemd, no init script; see RUSTSHIM_RESTART_CMD): restart it yourself"
    exit 0
fi
log "restarting containerd: $restart_cmd"
if restart_containerd && wait_ready; then
    log "containerd is back with the CRI plugin; runtime handler '$HANDLER' is ready"
    exit 0
fi
log "containerd or its CRI plugin did not come back: restoring the previous config"
if [[ -n ${backup:-} ]]; then
    cp -p "$backup" "$config"
else
    rm -f "$config"
fi
restart_containerd || true
wait_ready || log "containerd is still not ready after the rollback: check journalctl -u containerd"
die "installation rolled back"
