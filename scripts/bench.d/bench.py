#!/usr/bin/env python3
"""rustshim vs containerd-shim-runc-v2 benchmark (stdlib only). Run through scripts/bench.

Starts a private containerd, measures both runtimes side by side, prints a table and
(unless BENCH_DOCS=0) writes docs/benchmarks.md and docs/bench.svg. Always cleans up.
"""

import concurrent.futures as cf
import datetime
import hashlib
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RELEASE_DIR = os.path.abspath(os.environ.get("BENCH_SHIM_DIR") or os.path.join(REPO, "target", "release"))
RUST_BIN = os.path.join(RELEASE_DIR, "containerd-shim-rustshim-v2")
IMAGE = "docker.io/library/rsbox:latest"


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


NS = os.environ.get("BENCH_NS", "bench")
N_IDLE = max(1, env_int("BENCH_IDLE", 20))
N_EXECS = max(1, env_int("BENCH_EXECS", 50))
N_RUNS = max(1, env_int("BENCH_N", 50))
IDLE_SECS = max(1, env_int("BENCH_IDLE_SECS", 10))
N_DENSITY = max(0, env_int("BENCH_SCALE", 1000))  # idle containers per runtime, density step
PAR = max(1, env_int("BENCH_PAR", 8))
WRITE_DOCS = os.environ.get("BENCH_DOCS", "1") != "0" and not os.environ.get("BENCH_ONLY")
OUT_DIR = os.path.join(REPO, os.environ.get("BENCH_OUT", "docs"))
JSON_OUT = os.environ.get("BENCH_JSON")
N_TRACE = max(0, env_int("BENCH_TRACE", 5))  # runs/execs per runtime traced for shim CPU (0 = skip)
LOG_MIB = max(0, env_int("BENCH_LOG_MIB", 1024))  # output per log-throughput run (0 = skip)
N_POD = max(0, env_int("BENCH_POD", 20))  # CRI pod starts per runtime (0 = skip)
ONLY = os.environ.get("BENCH_ONLY", "")  # "log" / "pod" / "density": only those rows
TRACEFS = "/sys/kernel/tracing"

RUNTIMES = [  # key, label, runtime type, shim binary basename
    ("rust", "rustshim", "io.containerd.rustshim.v2", "containerd-shim-rustshim-v2"),
    ("go", "Go shim (runc.v2)", "io.containerd.runc.v2", "containerd-shim-runc-v2"),
]
RT_TYPE = {k: t for k, _, t, _ in RUNTIMES}
RT_BIN = {k: b for k, _, _, b in RUNTIMES}

TAG = secrets.token_hex(2)  # in every container id: two runs never collide in /run/containerd/runc/NS
CMD_TIMEOUT = 120


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    pass


def run(args, timeout=CMD_TIMEOUT, check=True, capture=True, env=None, cwd=None):
    p = subprocess.run(args, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout, env=env, text=True, cwd=cwd)
    if check and p.returncode != 0:
        raise BenchError(f"{' '.join(args)} -> exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return p


def timed(args, timeout=CMD_TIMEOUT):
    """Wall time in ms of one command (stdout discarded), or raises."""
    t0 = time.perf_counter()
    p = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout)
    dt = (time.perf_counter() - t0) * 1000.0
    if p.returncode != 0:
        raise BenchError(f"{' '.join(args)} -> exit {p.returncode}: "
                         f"{p.stderr.decode(errors='replace').strip()[-500:]}")
    return dt


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q):
    """Nearest-rank percentile."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100.0 * len(s)) - 1)]


def read(path):
    with open(path) as f:
        return f.read()


def loadavg():
    return read("/proc/loadavg").split()[:3]


# ---- /proc readers ----------------------------------------------------------------

def smaps_rollup(pid):
    out = {}
    for line in read(f"/proc/{pid}/smaps_rollup").splitlines()[1:]:
        k, _, v = line.partition(":")
        v = v.split()
        if v:
            out[k.strip()] = int(v[0])  # kB
    return out


def status(pid):
    out = {}
    for line in read(f"/proc/{pid}/status").splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def threads(pid):
    return int(status(pid)["Threads"])


def thread_names(pid):
    names = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            names.append(read(f"/proc/{pid}/task/{tid}/comm").strip())
        except OSError:
            pass
    return names


def cpu_snapshot(pid):
    """(utime+stime ticks of the whole process, on-cpu ns summed over threads,
    voluntary ctxt switches summed over threads, nonvoluntary likewise, per-thread vcsw)."""
    st = read(f"/proc/{pid}/stat")
    fields = st[st.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    ns = vcs = nvcs = 0
    per_thread = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns += int(read(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
            s = read(f"/proc/{pid}/task/{tid}/status")
        except OSError:
            continue
        v = int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", s, re.M).group(1))
        nv = int(re.search(r"^nonvoluntary_ctxt_switches:\s*(\d+)", s, re.M).group(1))
        vcs += v
        nvcs += nv
        per_thread[tid] = v
    return ticks, ns, vcs, nvcs, per_thread


def drop_page_cache(path):
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ---- the private containerd ------------------------------------------------------------

def containerd_rlimits():
    """In the forked child before exec (no threads run yet when the bench starts containerd):
    the limits containerd.service gives containerd, LimitNOFILE=infinity (systemd makes that
    fs.nr_open) and LimitNPROC=infinity, instead of whatever this shell had. containerd holds
    fds per shim (ttrpc connections both ways), the shims inherit these limits, and with the
    common soft limit of 1024 the density step would run out of fds, not of anything it measures.
    Without CAP_SYS_RESOURCE (some sandboxes) a hard limit cannot be raised: then soft = hard."""
    for res, want in ((resource.RLIMIT_NOFILE, int(read("/proc/sys/fs/nr_open"))),
                      (resource.RLIMIT_NPROC, resource.RLIM_INFINITY)):
        try:
            resource.setrlimit(res, (want, want))
        except (ValueError, OSError):
            hard = resource.getrlimit(res)[1]
            resource.setrlimit(res, (hard, hard))


class Env:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rsb.", dir="/tmp")
        self.sock = os.path.join(self.dir, "c.sock")
        self.cpid = None
        self.cproc = None
        self.nofile = None  # containerd's RLIMIT_NOFILE (soft, hard) once it is up
        self.runc_root = os.path.join(self.dir, "runc")
        self.bare_ids = set()
        # Private copies of both shim binaries, first on containerd's PATH: their file pages are
        # then shared only among this run's shims, so PSS does not depend on what else runs here
        # (another containerd's Go shims would otherwise take a share of the Go binary's pages).
        self.bin = os.path.join(self.dir, "bin")
        self.path_env = dict(os.environ)
        self.path_env["PATH"] = self.bin + ":" + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")

    def ctr(self, *args):
        return ["ctr", "-a", self.sock, "-n", NS, *args]

    def start(self, go_bin):
        os.makedirs(self.bin)
        for src in (RUST_BIN, go_bin):
            dst = os.path.join(self.bin, os.path.basename(src))
            shutil.copy2(src, dst)
            # A file written a moment ago sits in the page cache in the folios its writes made
            # (up to 2 MiB here), and a fault maps a whole dirty folio: a fresh copy would show
            # text resident that no shim ran. Drop them, so both binaries are read from disk
            # through readahead as an installed binary is after a reboot.
            drop_page_cache(dst)
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'''version = 2
root = "{self.dir}/root"
state = "{self.dir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.sock}"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{self.dir}/opt"
''')
        logf = open(os.path.join(self.dir, "containerd.log"), "w")
        self.cproc = subprocess.Popen(["containerd", "--config", cfg], stdin=subprocess.DEVNULL,
                                      stdout=logf, stderr=logf, env=self.path_env,
                                      start_new_session=True, preexec_fn=containerd_rlimits)
        self.cpid = self.cproc.pid
        for _ in range(150):
            if self.cproc.poll() is not None:
                raise BenchError("containerd exited:\n" + self.log_tail())
            if run(["ctr", "-a", self.sock, "version"], check=False, timeout=10).returncode == 0:
                self.nofile = resource.prlimit(self.cpid, resource.RLIMIT_NOFILE)
                return
            time.sleep(0.2)
        raise BenchError("containerd did not come up:\n" + self.log_tail())

    def log_tail(self, n=30):
        try:
            return "\n".join(read(os.path.join(self.dir, "containerd.log")).splitlines()[-n:])
        except OSError:
            return ""

    # -- shims of this containerd: the daemons whose cmdline names our socket
    def shims(self):
        """{container id: (runtime key, pid)} for the serving shim daemons of our containerd."""
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            argv = [a.decode(errors="replace") for a in argv if a]
            if not argv or "-address" not in argv or "-id" not in argv:
                continue
            try:
                if argv[argv.index("-address") + 1] != self.sock:
                    continue
                cid = argv[argv.index("-id") + 1]
            except IndexError:
                continue
            if argv[-1] in ("start", "delete"):
                continue  # a short-lived start/delete invocation, not the daemon
            base = os.path.basename(argv[0])
            key = next((k for k, b in RT_BIN.items() if b == base), None)
            if key:
                out[cid] = (key, int(d))
        return out

    def all_our_pids(self):
        """Every process (shim daemons and start/delete helpers) naming our socket."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if "-address" in argv and os.path.basename(argv[0]).startswith("containerd-shim"):
                i = argv.index("-address")
                if i + 1 < len(argv) and argv[i + 1] == self.sock:
                    pids.append(int(d))
        return pids

    def shim_pid(self, cid, tries=50):
        for _ in range(tries):
            s = self.shims().get(cid)
            if s:
                return s[1]
            time.sleep(0.1)
        raise BenchError(f"no shim process found for container {cid}")

    # -- containers
    def run_detached(self, key, cid):
        run(self.ctr("run", "-d", "--runtime", RT_TYPE[key], IMAGE, cid, "sleep", "100000"))

    def remove(self, cid):
        run(self.ctr("task", "kill", "-s", "SIGKILL", cid), check=False, timeout=30)
        for _ in range(100):
            p = run(self.ctr("task", "delete", cid), check=False, timeout=30)
            if p.returncode == 0 or "not found" in p.stderr:
                break
            time.sleep(0.05)
        else:
            run(self.ctr("task", "delete", "-f", cid), check=False, timeout=30)
        run(self.ctr("container", "delete", cid), check=False, timeout=30)

    def remove_all(self):
        p = run(self.ctr("containers", "ls", "-q"), check=False, timeout=30)
        ids = [l.strip() for l in p.stdout.splitlines() if l.strip()] if p.returncode == 0 else []
        if ids:
            with cf.ThreadPoolExecutor(PAR) as ex:
                list(ex.map(self.remove, ids))
        return ids

    # -- teardown: everything this run made, nothing else
    def cleanup(self):
        errors = []
        if self.cproc and self.cproc.poll() is None:
            try:
                left = self.remove_all()
                if left:
                    log(f"cleanup: deleted {len(left)} leftover containers")
            except Exception as e:  # keep going: the rest must still be cleaned
                errors.append(f"deleting containers: {e}")
        # bare runc containers
        for cid in list(self.bare_ids):
            run(["runc", "--root", self.runc_root, "delete", "-f", cid], check=False, timeout=30)
        # stop our containerd
        if self.cproc and self.cproc.poll() is None:
            self.cproc.terminate()
            try:
                self.cproc.wait(10)
            except subprocess.TimeoutExpired:
                self.cproc.kill()
                self.cproc.wait(10)
        # shims of our containerd that are still there (only ones naming our socket)
        left = self.all_our_pids()
        if left:
            errors.append(f"{len(left)} shim process(es) still alive after containerd stopped; killing {left}")
            sockets = set()
            for pid in left:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
                    cid = argv[argv.index("-id") + 1]
                    # where both shims put their socket: sha256(address/namespace/id)
                    h = hashlib.sha256(os.path.join(self.sock, NS, cid).encode()).hexdigest()
                    sockets.add(f"/run/containerd/s/{h}")
                except (OSError, ValueError, IndexError):
                    pass
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            for sp in sockets:
                try:
                    os.unlink(sp)
                except OSError:
                    pass
        # containers whose shim died keep running: remove them with the runc state of our ids
        runc_ns = f"/run/containerd/runc/{NS}"
        if os.path.isdir(runc_ns):
            for cid in os.listdir(runc_ns):
                if cid.startswith(TAG + "-"):
                    run(["runc", "--root", runc_ns, "delete", "-f", cid], check=False, timeout=30)
            try:
                os.rmdir(runc_ns)  # only if empty: another user of NS keeps theirs
            except OSError:
                pass
        # mounts under our dir, deepest first
        mounts = []
        for line in read("/proc/self/mountinfo").splitlines():
            mp = line.split()[4]
            if mp == self.dir or mp.startswith(self.dir + "/"):
                mounts.append(mp)
        for mp in sorted(mounts, key=len, reverse=True):
            run(["umount", "-l", mp], check=False, timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        # runc leaves the namespace's parent cgroup (/<NS>) in every hierarchy; remove it if empty,
        # after the empty cgroups of our ids under it (a start that failed half-way leaves those)
        for ctrl in os.listdir("/sys/fs/cgroup"):
            for d in (f"/sys/fs/cgroup/{ctrl}/{NS}", f"/sys/fs/cgroup/{NS}"):
                try:
                    mine = [c for c in os.listdir(d) if c.startswith(TAG + "-")]
                except OSError:
                    mine = []
                for c in mine:
                    try:
                        os.rmdir(os.path.join(d, c))
                    except OSError:
                        pass
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        # verify
        still = self.all_our_pids()
        if still:
            errors.append(f"shim processes still alive: {still}")
        if os.path.isdir(runc_ns):
            stale = [c for c in os.listdir(runc_ns) if c.startswith(TAG + "-")]
            if stale:
                errors.append(f"{len(stale)} runc states of this run left in {runc_ns}")
        stale = [d for ctrl in os.listdir("/sys/fs/cgroup")
                 for d in (f"/sys/fs/cgroup/{ctrl}/{NS}", f"/sys/fs/cgroup/{NS}") if os.path.isdir(d)
                 for c in os.listdir(d) if c.startswith(TAG + "-")]
        if stale:
            errors.append(f"{len(stale)} cgroups of this run left under /sys/fs/cgroup/*/{NS}")
        mounts = [l.split()[4] for l in read("/proc/self/mountinfo").splitlines()]
        if any(mp == self.dir or mp.startswith(self.dir + "/") for mp in mounts):
            errors.append(f"mounts left under {self.dir}")
        if os.path.exists(self.dir):
            errors.append(f"{self.dir} could not be removed")
        return errors


# ---- bare runc bundle -------------------------------------------------------------

def make_bundles(env):
    """Two bundles sharing one busybox rootfs: /bin/true (for `runc run`) and sleep (for exec)."""
    rootfs = os.path.join(env.dir, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for d in ("dev", "proc", "sys", "tmp", "etc", "root"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy2(os.environ.get("BUSYBOX", "/bin/busybox"), os.path.join(rootfs, "bin", "busybox"))
    for a in ("true", "sleep", "sh"):
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    spec_dir = os.path.join(env.dir, "spec")
    os.makedirs(spec_dir)
    subprocess.run(["runc", "spec"], cwd=spec_dir, check=True, stdin=subprocess.DEVNULL)
    spec = json.loads(read(os.path.join(spec_dir, "config.json")))
    bundles = {}
    for name, args in (("true", ["/bin/true"]), ("sleep", ["/bin/sleep", "100000"])):
        b = os.path.join(env.dir, "b-" + name)
        os.makedirs(b)
        s = json.loads(json.dumps(spec))
        s["process"]["terminal"] = False
        s["process"]["args"] = args
        s["root"]["path"] = rootfs
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(s, f)
        bundles[name] = b
    return bundles


# ---- the measurements --------------------------------------------------------------

def mem_of(pid):
    r = smaps_rollup(pid)
    return {"rss": r["Rss"], "pss": r["Pss"], "pss_anon": r.get("Pss_Anon"),
            "pss_file": r.get("Pss_File"), "private_dirty": r.get("Private_Dirty"),
            "anon": r.get("Anonymous"), "threads": threads(pid), "rollup": r}


def step_memory_and_idle(env, R):
    ids = {k: [f"{TAG}-i{k[0]}-{i:02d}" for i in range(N_IDLE)] for k in RT_TYPE}
    # one idle container each
    log("memory: one idle container per runtime")
    for k in RT_TYPE:
        env.run_detached(k, ids[k][0])
    time.sleep(2)
    one = {}
    for k in RT_TYPE:
        pid = env.shim_pid(ids[k][0])
        one[k] = mem_of(pid)
        one[k]["thread_names"] = thread_names(pid)
        one[k]["pid"] = pid
    R["mem_one"] = one
    # the rest, interleaved
    log(f"memory: {N_IDLE} idle containers per runtime")
    for i in range(1, N_IDLE):
        for k in RT_TYPE:
            env.run_detached(k, ids[k][i])
    time.sleep(2)
    many = {}
    pids = {}
    for k in RT_TYPE:
        pids[k] = [env.shim_pid(c) for c in ids[k]]
        ms = [mem_of(p) for p in pids[k]]
        many[k] = {"rss": [m["rss"] for m in ms], "pss": [m["pss"] for m in ms],
                   "threads": [m["threads"] for m in ms]}
    R["mem_many"] = many
    # idle cost over IDLE_SECS
    log(f"idle: CPU time and context switches of {2 * N_IDLE} shims over {IDLE_SECS} s")
    before = {k: [cpu_snapshot(p) for p in pids[k]] for k in RT_TYPE}
    t0 = time.monotonic()
    time.sleep(IDLE_SECS)
    after = {k: [cpu_snapshot(p) for p in pids[k]] for k in RT_TYPE}
    secs = time.monotonic() - t0
    tck = os.sysconf("SC_CLK_TCK")
    idle = {}
    for k in RT_TYPE:
        rows = []
        for b, a in zip(before[k], after[k]):
            waking = {tid: a[4][tid] - b[4].get(tid, 0) for tid in a[4]}
            rows.append({"ticks": a[0] - b[0], "cpu_ms_stat": (a[0] - b[0]) * 1000.0 / tck,
                         "cpu_ms_sched": (a[1] - b[1]) / 1e6, "vcsw": a[2] - b[2],
                         "nvcsw": a[3] - b[3],
                         "waking_threads": sum(1 for v in waking.values() if v > 0)})
        idle[k] = rows
    R["idle"] = {"secs": secs, "per_shim": idle}
    # where the Go shim's wakeups come from: per-thread names of shim 0 that woke
    R["idle_pids"] = {k: pids[k][0] for k in RT_TYPE}
    return ids


def step_exec(env, R, ids, bundles):
    target = {k: ids[k][0] for k in RT_TYPE}
    pid = {k: env.shim_pid(target[k]) for k in RT_TYPE}
    before = {k: mem_of(pid[k]) for k in RT_TYPE}
    # bare runc container for the exec baseline
    bare = f"{TAG}-bare-exec"
    env.bare_ids.add(bare)
    # stdio to /dev/null: the detached container would otherwise hold our pipes open
    subprocess.run(["runc", "--root", env.runc_root, "run", "-d", "--bundle", bundles["sleep"], bare],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=CMD_TIMEOUT)
    log(f"exec: {N_EXECS} execs per runtime into one container, interleaved with bare `runc exec`")
    lat = {"rust": [], "go": [], "runc": [], "ctr": []}
    peak = {k: before[k]["threads"] for k in RT_TYPE}
    order = ["rust", "go", "runc", "ctr"]
    for i in range(N_EXECS):
        o = order[i % 4:] + order[:i % 4]  # rotate who goes first
        for k in o:
            if k == "runc":
                lat[k].append(timed(["runc", "--root", env.runc_root, "exec", bare, "/bin/true"]))
            elif k == "ctr":  # ctr start-up + one containerd RPC, no shim involved
                lat[k].append(timed(env.ctr("version")))
            else:
                lat[k].append(timed(env.ctr("task", "exec", "--exec-id", f"e{i}", target[k], "true")))
                peak[k] = max(peak[k], threads(pid[k]))
    run(["runc", "--root", env.runc_root, "delete", "-f", bare], check=False)
    env.bare_ids.discard(bare)
    time.sleep(1)
    after = {}
    for k in RT_TYPE:
        after[k] = mem_of(pid[k])
        after[k]["thread_names"] = thread_names(pid[k])
    R["exec"] = {"lat": lat, "before": before, "after": after, "peak_threads": peak}


def step_run_rm(env, R, bundles):
    log(f"latency: `ctr run --rm ... /bin/true` x{N_RUNS} per runtime + bare `runc run`, interleaved")
    lat = {"rust": [], "go": [], "runc": []}
    order = ["rust", "go", "runc"]

    def one(k, i):
        if k == "runc":
            cid = f"{TAG}-bare-{i}"
            env.bare_ids.add(cid)
            dt = timed(["runc", "--root", env.runc_root, "run", "--bundle", bundles["true"], cid])
            env.bare_ids.discard(cid)
            return dt
        return timed(env.ctr("run", "--rm", "--runtime", RT_TYPE[k], IMAGE, f"{TAG}-l{k[0]}-{i}", "/bin/true"))

    for i in range(2):  # warm-up, not counted
        for k in order:
            one(k, f"w{i}")
    la0 = loadavg()
    for i in range(N_RUNS):
        o = order[i % 3:] + order[:i % 3]
        for k in o:
            lat[k].append(one(k, i))
    R["run_rm"] = {"lat": lat, "loadavg_before": la0, "loadavg_after": loadavg()}


def cpu_s(pid):
    """utime + stime of a process, in seconds."""
    f = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def step_log_throughput(env, R):
    """A container writes LOG_MIB MiB to stdout as fast as it can: (a) through its FIFO to ctr
    (a fast reader: this script drains ctr's stdout), (b) into a `file://` log. MiB/s from the
    first byte to the last, and the shim's CPU seconds per GiB (its utime+stime over the run)."""
    if LOG_MIB == 0:
        return
    total = LOG_MIB << 20
    # the container waits a moment, so the shim's CPU can be read before the output starts
    script = f"sleep 2; dd if=/dev/zero bs=1M count={LOG_MIB} 2>/dev/null; exec sleep 100000"
    res = {k: {} for k in RT_TYPE}
    for k in RT_TYPE:
        log(f"log throughput: {LOG_MIB} MiB through a FIFO, {k}")
        cid = f"{TAG}-lf{k[0]}"
        p = subprocess.Popen(env.ctr("run", "--runtime", RT_TYPE[k], IMAGE, cid, "sh", "-c", script),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        spid = env.shim_pid(cid)
        cpu0 = cpu_s(spid)
        got, t0 = 0, None
        fd = p.stdout.fileno()
        while got < total:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            if t0 is None:
                t0 = time.perf_counter()
            got += len(b)
        secs = time.perf_counter() - (t0 or time.perf_counter())
        cpu = cpu_s(spid) - cpu0
        env.remove(cid)
        p.stdout.close()
        p.wait(timeout=60)
        if got < total:
            raise BenchError(f"log throughput ({k}, FIFO): got {got} of {total} bytes")
        res[k]["fifo_mib_s"] = LOG_MIB / secs
        res[k]["fifo_cpu_s_per_gib"] = cpu / (LOG_MIB / 1024)

        log(f"log throughput: {LOG_MIB} MiB into a file:// log, {k}")
        cid = f"{TAG}-ll{k[0]}"
        path = os.path.join(env.dir, f"log-{k}.txt")
        run(env.ctr("run", "-d", "--log-uri", f"file://{path}", "--runtime", RT_TYPE[k], IMAGE, cid, "sh", "-c", script))
        spid = env.shim_pid(cid)
        cpu0 = cpu_s(spid)
        t0 = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            size = os.path.getsize(path) if os.path.exists(path) else 0
            if size and t0 is None:
                t0 = time.perf_counter()
            if size >= total:
                break
            time.sleep(0.005)
        else:
            raise BenchError(f"log throughput ({k}, file): {size} of {total} bytes after 600 s")
        secs = time.perf_counter() - t0
        cpu = cpu_s(spid) - cpu0
        env.remove(cid)
        os.unlink(path)
        res[k]["file_mib_s"] = LOG_MIB / secs
        res[k]["file_cpu_s_per_gib"] = cpu / (LOG_MIB / 1024)
    R["log"] = res


TRACE_EVENTS = ("sched_process_fork", "sched_process_exec", "sched_process_exit", "sched_stat_runtime")


def exec_phases(events):
    """Where the time of one `ctr task exec ... true` goes, from the process events of its trace:
    ctr starts -> runc starts (ctr start-up, containerd, the shim's Exec and Start up to the spawn),
    runc exec itself, and runc or the process exiting, whichever is later -> ctr exits (the Start
    reply, the exit's event and Wait, Delete, ctr's teardown). None when a mark is missing."""
    def first(pred):
        return next((e for e in events if pred(e)), None)
    ctr = first(lambda e: e[1] == "sched_process_exec" and re.search(r"filename=\S*/ctr ", e[3] + " "))
    if not ctr:
        return None
    ctr_pid = re.search(r" pid=(\d+)", ctr[3]).group(1)
    runc = first(lambda e: e[1] == "sched_process_exec" and e[0] > ctr[0]
                 and re.search(r"filename=\S*/runc ", e[3] + " "))
    if not runc:
        return None
    runc_pid = re.search(r" pid=(\d+)", runc[3]).group(1)
    exit_of = lambda pat: first(lambda e: e[1] == "sched_process_exit" and re.search(pat, e[3]))
    ctr_exit = exit_of(rf"comm=ctr pid={ctr_pid} ")
    runc_exit = exit_of(rf" pid={runc_pid} ")
    proc_exit = exit_of(r"comm=true ")
    if not (ctr_exit and runc_exit and proc_exit):
        return None
    return {"pre": runc[0] - ctr[0], "runc": runc_exit[0] - runc[0],
            "post": ctr_exit[0] - max(runc_exit[0], proc_exit[0])}


class Tracer:
    """A private ftrace instance recording fork/exec/exit and sched_stat_runtime, to add up the
    CPU time spent by processes named containerd-shim (the shim's start/daemon/delete processes
    and its children until they exec runc) in one operation. Never touches the global buffer."""

    def __init__(self):
        self.dir = None
        self.mounted = False
        if not os.path.isdir(os.path.join(TRACEFS, "instances")) and os.path.isdir(TRACEFS):
            # tracefs is not mounted on every machine: mount it for this step, unmount after
            self.mounted = run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=False).returncode == 0
        if not os.path.isdir(os.path.join(TRACEFS, "instances")):
            log(f"no tracefs at {TRACEFS}; skipping the shim CPU step")
            self._unmount()
            return
        d = os.path.join(TRACEFS, "instances", f"rsbench-{TAG}")
        try:
            os.mkdir(d)
            for e in TRACE_EVENTS:
                with open(os.path.join(d, "events", "sched", e, "enable"), "w") as f:
                    f.write("1")
            with open(os.path.join(d, "buffer_size_kb"), "w") as f:
                f.write("16384")
            self._w("tracing_on", "0", d)
            self.dir = d
        except OSError as e:
            log(f"ftrace unavailable ({e}); skipping the shim CPU step")
            self.close(d)

    def _w(self, name, val, d=None):
        with open(os.path.join(d or self.dir, name), "w") as f:
            f.write(val)

    def measure(self, roots, fn):
        """Run fn() with tracing on; CPU ns of comm containerd-shim in the process family of roots."""
        self._w("trace", "")
        self._w("tracing_on", "1")
        try:
            fn()
            time.sleep(0.15)  # the daemon's exit path (Shutdown reply, event flush) after ctr returns
        finally:
            self._w("tracing_on", "0")
        fam, ns, lost = set(roots), 0, False
        self.events = []  # (ms, event, tid, rest) of the process events, for exec_phases
        with open(os.path.join(self.dir, "trace")) as f:
            for line in f:
                if line.startswith("#"):
                    lost = lost or "LOST" in line
                    continue
                m = re.search(r"-(\d+)\s+\[\d+\]\s+(?:\S+\s+)?([\d.]+): (sched_\w+): (.*)", line)
                if not m:
                    continue
                tid, ev, rest = int(m.group(1)), m.group(3), m.group(4)
                if ev != "sched_stat_runtime":
                    self.events.append((float(m.group(2)) * 1000, ev, tid, rest))
                if ev == "sched_process_fork":
                    if tid in fam:
                        fam.add(int(re.search(r"child_pid=(\d+)", rest).group(1)))
                elif ev == "sched_stat_runtime":
                    mm = re.search(r"comm=(\S+) pid=(\d+) runtime=(\d+)", rest)
                    if mm and mm.group(1) == "containerd-shim" and int(mm.group(2)) in fam:
                        ns += int(mm.group(3))
        return ns / 1e6, lost

    def close(self, d=None):
        d = d or self.dir
        if not d:
            return
        try:
            self._w("tracing_on", "0", d)
            for e in TRACE_EVENTS:
                self._w(os.path.join("events", "sched", e, "enable"), "0", d)
        except OSError:
            pass
        for _ in range(20):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.1)
        self.dir = None
        self._unmount()

    def _unmount(self):
        if self.mounted:
            run(["umount", TRACEFS], check=False)
            self.mounted = False


def tids(pid):
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def step_shim_cpu(env, R):
    """CPU time of the shim itself per `ctr run --rm` (start + daemon + delete processes) and per
    `ctr task exec`, from ftrace; runc, containerd and ctr are not counted."""
    tr = Tracer()
    if not tr.dir:
        return
    log(f"shim CPU (ftrace): {N_TRACE} `ctr run --rm` and {N_TRACE} execs per runtime")
    res = {k: {"run": [], "exec": [], "exec_phases": [], "lost": 0} for k in RT_TYPE}
    try:
        holders = {k: f"{TAG}-t{k[0]}" for k in RT_TYPE}
        for k in RT_TYPE:
            env.run_detached(k, holders[k])
        for i in range(N_TRACE):
            for k in RT_TYPE:
                cid = f"{TAG}-c{k[0]}-{i}"
                ms, lost = tr.measure(tids(env.cpid), lambda: timed(env.ctr(
                    "run", "--rm", "--runtime", RT_TYPE[k], IMAGE, cid, "/bin/true")))
                res[k]["run"].append(ms)
                res[k]["lost"] += lost
                spid = env.shim_pid(holders[k])
                ms, lost = tr.measure(tids(spid), lambda: timed(env.ctr(
                    "task", "exec", "--exec-id", f"t{i}", holders[k], "true")))
                res[k]["exec"].append(ms)
                res[k]["lost"] += lost
                ph = exec_phases(tr.events)
                if ph:
                    res[k]["exec_phases"].append(ph)
        for k in RT_TYPE:
            env.remove(holders[k])
    finally:
        tr.close()
    R["shim_cpu"] = res


# What the density step leaves free for everything else on the machine: it stops starting
# containers, and measures what it holds, before the kernel would have to say no (with no swap the
# OOM killer picks a victim anywhere; with no free pid every fork on the machine fails).
DENSITY_MIN_AVAIL_MIB = 2048  # MemAvailable
DENSITY_PID_RESERVE = 2000  # tasks below min(pid_max, threads-max): PAR starts in flight (ctr,
#                             runc init, a new shim: ~40 threads each) and whoever else runs here
DENSITY_MIN_DISK_MIB = 256  # free on /run (runc state, shim sockets) and on the temp dir


def density_limit(env):
    """Why no further container should be started now, or None."""
    mi = {l.split(":")[0]: int(l.split()[1]) for l in read("/proc/meminfo").splitlines()}
    if mi["MemAvailable"] < DENSITY_MIN_AVAIL_MIB * 1024:
        return f"MemAvailable {mi['MemAvailable'] // 1024} MiB < {DENSITY_MIN_AVAIL_MIB} MiB"
    tasks = int(read("/proc/loadavg").split()[3].split("/")[1])  # threads, each holding a pid
    cap = min(int(read("/proc/sys/kernel/pid_max")), int(read("/proc/sys/kernel/threads-max")))
    if tasks > cap - DENSITY_PID_RESERVE:
        return f"{tasks} tasks on the machine, within {DENSITY_PID_RESERVE} of pid_max/threads-max {cap}"
    for d in ("/run", env.dir):
        st = os.statvfs(d)
        if st.f_bavail * st.f_frsize < DENSITY_MIN_DISK_MIB << 20:
            return f"less than {DENSITY_MIN_DISK_MIB} MiB free on {d}"
        if st.f_files and st.f_favail < 10000:
            return f"fewer than 10000 free inodes on {d}"
    return None


def containerd_mem(env):
    """containerd's own Rss/Pss (smaps_rollup), peak RSS so far (VmHWM) and threads, in kB."""
    try:
        r, st = smaps_rollup(env.cpid), status(env.cpid)
        return {"rss": r["Rss"], "pss": r["Pss"], "hwm": int(st["VmHWM"].split()[0]),
                "threads": int(st["Threads"]), "fds": len(os.listdir(f"/proc/{env.cpid}/fd"))}
    except (OSError, KeyError, ValueError):
        return None


def density_one(env, k):
    """N_DENSITY idle containers of runtime k: start them PAR at a time (wall timed), measure every
    shim once all are up, then kill and delete them PAR at a time (wall timed). A failed start, or
    density_limit(), ends the start phase early: what was held then is measured and reported as
    the number reached. An interrupt stops both phases at once (queued work is dropped, the at
    most PAR commands in flight finish); Env.cleanup removes whatever is left."""
    ids = [f"{TAG}-d{k[0]}-{i:04d}" for i in range(N_DENSITY)]
    stop = threading.Event()
    lock = threading.Lock()
    tried, started, why = [], set(), []

    def start(cid):
        if stop.is_set():
            return
        lim = density_limit(env)
        if lim:
            with lock:
                why.append(lim)
            stop.set()
            return
        with lock:
            tried.append(cid)
        try:
            env.run_detached(k, cid)
        except (BenchError, subprocess.TimeoutExpired) as e:
            with lock:
                why.append(f"starting {cid} failed: {e}")
            stop.set()
            return
        with lock:
            started.add(cid)

    def remove(cid):
        if not stop.is_set():
            env.remove(cid)

    log(f"density: {N_DENSITY} idle {k} containers, {PAR} at a time "
        f"(containerd RLIMIT_NOFILE {env.nofile[0] if env.nofile else '?'})")
    avail0 = int(re.search(r"MemAvailable:\s*(\d+)", read("/proc/meminfo")).group(1))
    cd0 = containerd_mem(env)
    t0 = time.perf_counter()
    run_all(start, ids, stop)
    start_s = time.perf_counter() - t0
    if why:
        log(f"density: {k}: stopped starting after {len(started)} of {N_DENSITY}: {why[0]}")
    time.sleep(3)  # let the last shims settle (Go: GC, runtime threads) before they are read
    shims = env.shims()
    held = [c for c in ids if c in started and c in shims]
    if len(held) != len(started):
        why.append(f"{len(started) - len(held)} started containers have no shim process")
        log(f"density: {k}: {why[-1]}")
    log(f"density: {k}: {len(held)} containers up after {start_s:.1f} s; reading smaps_rollup")
    mems, thr = [], []
    for c in held:
        try:
            mems.append(smaps_rollup(shims[c][1]))
            thr.append(threads(shims[c][1]))
        except (OSError, KeyError):
            pass
    cd = containerd_mem(env)
    avail1 = int(re.search(r"MemAvailable:\s*(\d+)", read("/proc/meminfo")).group(1))
    tasks = int(read("/proc/loadavg").split()[3].split("/")[1])
    log(f"density: {k}: removing {len(tried)} containers, {PAR} at a time")
    stop.clear()
    t0 = time.perf_counter()
    run_all(remove, tried, stop)
    stop_s = time.perf_counter() - t0
    time.sleep(1)
    shims = env.shims()
    left = sum(1 for c in ids if c in shims)
    pss, rss = [m["Pss"] for m in mems], [m["Rss"] for m in mems]
    r = {"n_req": N_DENSITY, "n": len(mems), "why": why[0] if why else None,
         "start_s": start_s, "stop_s": stop_s,
         "pss_sum_kb": sum(pss), "rss_sum_kb": sum(rss),
         "pss_med_kb": median(pss), "rss_med_kb": median(rss),
         "pss_kb": pss, "rss_kb": rss, "threads_sum": sum(thr),
         "containerd_before": cd0, "containerd_up": cd, "containerd_nofile": env.nofile,
         "mem_available_drop_kb": avail0 - avail1, "tasks_up": tasks, "shims_left": left}
    log(f"density: {k}: start {start_s:.1f} s, teardown {stop_s:.1f} s, shim PSS {sum(pss) / 1024:.0f} MiB "
        f"(median {median(pss) / 1024:.2f}), RSS {sum(rss) / 1024:.0f} MiB (median {median(rss) / 1024:.2f}), "
        f"{sum(thr)} threads; containerd RSS {cd['rss'] / 1024 if cd else float('nan'):.0f} MiB, "
        f"{cd['fds'] if cd else '?'} fds, {cd['threads'] if cd else '?'} threads; "
        f"MemAvailable -{(avail0 - avail1) / 1024:.0f} MiB; {tasks} tasks on the machine; {left} shims left")
    return r


def run_all(fn, items, stop):
    """fn over items, PAR at a time; `stop` is set before the pool's exit waits, so that on an
    interrupt the queued calls (which check it) return at once instead of all running."""
    with cf.ThreadPoolExecutor(PAR) as ex:
        try:
            for f in [ex.submit(fn, c) for c in items]:
                f.result()
        finally:
            stop.set()


def step_density(env, R):
    """The density rows: N_DENSITY idle containers per runtime, one runtime after the other."""
    R["density"] = {}
    for k in RT_TYPE:
        R["density"][k] = density_one(env, k)
        time.sleep(1)


# ---- CRI pod start (a cargo test with its own CRI-enabled containerd) -------------------

POD_CARGO = ["cargo", "test", "-p", "rustshim-cri-e2e", "--test", "bench_pod_start"]
POD_TEST = "cri_pod_start"
# Knobs of the CRI harness that would change what is measured (handler mapping, runtime_path,
# runtime options, a skip instead of a failure): the step must not inherit them.
POD_ENV_DROP = ("RUSTSHIM_TEST_RUNTIME", "RUSTSHIM_CRI_RUNTIME_PATH", "RUSTSHIM_CRI_OPTIONS",
                "RUSTSHIM_ALLOW_SKIP", "RUSTSHIM_CONTAINERD_DIR")


def pod_wanted():
    return N_POD > 0 and ONLY in ("", "pod")


def containerd_dir():
    """The dir of the containerd this run uses (the CRI step must start the same one)."""
    d = os.environ.get("BENCH_CONTAINERD_DIR", "").strip()
    return os.path.abspath(d) if d else os.path.dirname(shutil.which("containerd"))


def pod_env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in POD_ENV_DROP}
    e.update(extra)
    return e


def pod_prepare():
    """Builds the pod-start test before any containerd runs, so no compile shares the machine with
    a measurement. Returns None when the step will run, else why it is skipped; raises when the
    build fails (a broken test must not quietly drop the row)."""
    missing = [t for t in ("cargo", "protoc") if not shutil.which(t)]
    if missing:
        return f"{' and '.join(missing)} not on PATH (the CRI test crate is built with cargo; k8s-cri needs protoc)"
    log(f"CRI pod start: building its test ({' '.join(POD_CARGO)} --no-run)")
    p = run(POD_CARGO + ["--no-run"], timeout=3600, check=False, env=pod_env(), cwd=REPO)
    if p.returncode != 0:
        raise BenchError(f"building the CRI pod-start test failed:\n{p.stderr.strip()[-2000:]}")
    return None


def cleanup_cri_dir(d):
    """What the test's own drop would have removed, after the test was killed: its containerd
    (found by its config in d), the shims naming its socket, its pods' runc containers (their
    ids are the bundle names), mounts under d, d itself and its pod cgroup parent."""
    conf, sock = os.path.join(d, "config.toml"), os.path.join(d, "c.sock")

    def pids_with(arg):
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue
            if arg in argv:
                out.append(int(pid))
        return out

    for sig, pids in ((signal.SIGTERM, pids_with(conf)), (signal.SIGKILL, pids_with(sock))):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
    runc_root = "/run/containerd/runc/k8s.io"
    tasks = os.path.join(d, "state", "io.containerd.runtime.v2.task", "k8s.io")
    for cid in (os.listdir(tasks) if os.path.isdir(tasks) else []):
        run(["runc", "--root", runc_root, "delete", "-f", cid], check=False, timeout=30)
    try:
        os.rmdir(runc_root)  # only if empty: other users of k8s.io keep theirs
    except OSError:
        pass
    mounts = [l.split()[4] for l in read("/proc/self/mountinfo").splitlines()]
    for mp in sorted((m for m in mounts if m == d or m.startswith(d + "/")), key=len, reverse=True):
        run(["umount", "-l", mp], check=False, timeout=30)
    shutil.rmtree(d, ignore_errors=True)
    parent = "rustshim-cri-" + os.path.basename(d)[len("rscri-"):]
    for root in ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", c) for c in os.listdir("/sys/fs/cgroup")]:
        top = os.path.join(root, parent)
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def step_pod_start(env, R):
    """RunPodSandbox + CreateContainer + StartContainer of one busybox container, through CRI,
    N_POD times per runtime (interleaved, after 2 discarded warm-ups each): the ignored cargo test
    tests/cri-e2e/tests/bench_pod_start.rs starts a private containerd of its own with CRI and
    both handlers, serving rustshim from env.bin (this run's release copy)."""
    log(f"CRI pod start: {N_POD} pods per runtime (+2 warm-up), interleaved, through a private "
        f"CRI containerd of {containerd_dir()}")
    out = os.path.join(env.dir, "pod.json")
    e = pod_env(BENCH_POD_N=str(N_POD), BENCH_POD_JSON=out, RUSTSHIM_CRI_SHIM_DIR=env.bin,
                RUSTSHIM_CONTAINERD_BIN_DIR=containerd_dir())
    # Its own process group: cargo and the test binary can be killed as one, and a ^C reaches
    # only the bench, which then cleans up after them.
    p = subprocess.Popen(POD_CARGO + ["--", "--ignored", "--exact", "--nocapture", POD_TEST],
                         cwd=REPO, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []

    def reader():  # the summary lines live, everything kept for a failure report
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("bench_pod_start: "):
                log("  " + line[len("bench_pod_start: "):].rstrip())

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        # the test bounds each of its own waits; this is a backstop
        p.wait(timeout=300 + 30 * 2 * (N_POD + 2))
    except BaseException as ex:
        # killed, the test cannot run its drop: remove its containerd and the rest ourselves
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        t.join(5)
        m = re.search(r"\((/tmp/rscri-[^)/]+)\)", "\n".join(lines))
        if m:
            log(f"CRI pod start: test killed; cleaning up after it in {m.group(1)}")
            cleanup_cri_dir(m.group(1))
        if isinstance(ex, subprocess.TimeoutExpired):
            raise BenchError("CRI pod-start test timed out:\n" + "\n".join(lines[-40:]))
        raise
    t.join(10)
    if p.returncode != 0:
        raise BenchError("CRI pod-start test failed:\n" + "\n".join(lines[-40:]))
    R["pod"] = json.loads(read(out))


# ---- report ----------------------------------------------------------------------

def fmt(v, unit):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if unit == "KiB":
        return f"{v / 1024:.2f} MiB"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "s":
        return f"{v:.1f} s" if v >= 1 else f"{v:.3f} s"
    if unit == "MiB/s":
        return f"{v:.0f} MiB/s"
    if unit == "B":
        return f"{v / 1e6:.2f} MB"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.1f}"
    return str(v)


def build_rows(R):
    """[(metric, rust, go, unit, target_text, kind, bound, chart)], kind: ratio|abs|info."""
    rows = []
    add = lambda *r: rows.append(r)

    def add_pod():
        if "pod" not in R:
            return
        pr, pg = R["pod"]["rust"], R["pod"]["go"]
        add(f"CRI pod start (RunPodSandbox+CreateContainer+StartContainer), p50 (n={len(pr)})",
            median(pr), median(pg), "ms", "ratio <= 0.85", "ratio", 0.85, True)
        add("CRI pod start, p90", pct(pr, 90), pct(pg, 90), "ms", "", "info", None, False)

    def add_density():
        if "density" not in R:
            return
        dr, dg = R["density"]["rust"], R["density"]["go"]
        n = str(dr["n"]) if dr["n"] == dg["n"] else f"{dr['n']} (rustshim) / {dg['n']} (Go)"
        d = f"Density: {n} idle containers"
        if dr["n"] < N_DENSITY or dg["n"] < N_DENSITY:  # the most this machine held
            add(f"{d}: held of {N_DENSITY} requested", dr["n"], dg["n"], "", "", "info", None, False)
        add(f"{d}, start, {PAR} at a time (wall)", dr["start_s"], dg["start_s"], "s", "", "info", None, False)
        add(f"{d}, total shim PSS", dr["pss_sum_kb"] / 1024, dg["pss_sum_kb"] / 1024, "MiB", "", "info", None, True)
        add(f"{d}, total shim RSS", dr["rss_sum_kb"] / 1024, dg["rss_sum_kb"] / 1024, "MiB", "", "info", None, False)
        add(f"{d}, PSS per shim (median)", dr["pss_med_kb"], dg["pss_med_kb"], "KiB", "", "info", None, False)
        add(f"{d}, RSS per shim (median)", dr["rss_med_kb"], dg["rss_med_kb"], "KiB", "", "info", None, False)
        add(f"{d}, total shim threads", dr["threads_sum"], dg["threads_sum"], "", "", "info", None, False)
        if dr["containerd_up"] and dg["containerd_up"]:
            add(f"{d}, containerd's own RSS with all up", dr["containerd_up"]["rss"], dg["containerd_up"]["rss"],
                "KiB", "", "info", None, False)
        add(f"{d}, kill + delete all (wall)", dr["stop_s"], dg["stop_s"], "s", "", "info", None, False)

    if ONLY == "pod":
        add_pod()
        return rows
    if ONLY == "density":
        add_density()
        return rows
    if "log" in R:
        lg = R["log"]
        add(f"Log throughput, {LOG_MIB} MiB stdout via FIFO to a fast reader", lg["rust"]["fifo_mib_s"], lg["go"]["fifo_mib_s"], "MiB/s", "ratio >= 1.5", "ratio_min", 1.5, True)
        add("  shim CPU per GiB, FIFO", lg["rust"]["fifo_cpu_s_per_gib"], lg["go"]["fifo_cpu_s_per_gib"], "s", "ratio <= 0.5", "ratio", 0.5, True)
        add(f"Log throughput, {LOG_MIB} MiB stdout into a file:// log", lg["rust"]["file_mib_s"], lg["go"]["file_mib_s"], "MiB/s", "ratio >= 1.5", "ratio_min", 1.5, True)
        add("  shim CPU per GiB, file://", lg["rust"]["file_cpu_s_per_gib"], lg["go"]["file_cpu_s_per_gib"], "s", "ratio <= 0.5", "ratio", 0.5, True)
    if ONLY == "log":
        return rows
    m1, mm, ex = R["mem_one"], R["mem_many"], R["exec"]
    add("PSS per shim, 1 idle container", m1["rust"]["pss"], m1["go"]["pss"], "KiB", "ratio <= 1/8", "ratio", 1 / 8, True)
    add("RSS per shim, 1 idle container", m1["rust"]["rss"], m1["go"]["rss"], "KiB", "ratio <= 1/6", "ratio", 1 / 6, True)
    add(f"PSS per shim, median of {N_IDLE} idle", median(mm["rust"]["pss"]), median(mm["go"]["pss"]), "KiB", "ratio <= 1/8", "ratio", 1 / 8, True)
    add(f"RSS per shim, median of {N_IDLE} idle", median(mm["rust"]["rss"]), median(mm["go"]["rss"]), "KiB", "ratio <= 1/6", "ratio", 1 / 6, True)
    add(f"Threads per shim, idle (max of {N_IDLE})", max(mm["rust"]["threads"]), max(mm["go"]["threads"]), "", "rustshim <= 2", "abs", 2, True)
    add(f"PSS after {N_EXECS} execs", ex["after"]["rust"]["pss"], ex["after"]["go"]["pss"], "KiB", "ratio <= 1/8", "ratio", 1 / 8, True)
    add(f"RSS after {N_EXECS} execs", ex["after"]["rust"]["rss"], ex["after"]["go"]["rss"], "KiB", "ratio <= 1/6", "ratio", 1 / 6, True)
    add(f"Threads after {N_EXECS} execs", ex["after"]["rust"]["threads"], ex["after"]["go"]["threads"], "", "rustshim <= 2", "abs", 2, False)
    add("Threads, peak during execs", ex["peak_threads"]["rust"], ex["peak_threads"]["go"], "", "rustshim <= 2", "abs", 2, False)
    idle = R["idle"]["per_shim"]
    secs = R["idle"]["secs"]
    add(f"Voluntary ctxt switches per idle shim / {secs:.0f} s (all threads, max of {N_IDLE})",
        max(r["vcsw"] for r in idle["rust"]), max(r["vcsw"] for r in idle["go"]), "", "rustshim = 0", "abs", 0, False)
    add(f"Voluntary ctxt switches per idle shim / {secs:.0f} s (median)",
        median([r["vcsw"] for r in idle["rust"]]), median([r["vcsw"] for r in idle["go"]]), "", "", "info", None, False)
    add(f"CPU time per idle shim / {secs:.0f} s, utime+stime (median)",
        median([r["cpu_ms_stat"] for r in idle["rust"]]), median([r["cpu_ms_stat"] for r in idle["go"]]), "ms", "", "info", None, False)
    add(f"CPU time per idle shim / {secs:.0f} s, schedstat (median)",
        median([r["cpu_ms_sched"] for r in idle["rust"]]), median([r["cpu_ms_sched"] for r in idle["go"]]), "ms", "", "info", None, False)
    rl = R["run_rm"]["lat"]
    add(f"`ctr run --rm` /bin/true, median (n={len(rl['rust'])})", median(rl["rust"]), median(rl["go"]), "ms", "ratio <= 0.85", "ratio", 0.85, True)
    add("`ctr run --rm` /bin/true, p90", pct(rl["rust"], 90), pct(rl["go"], 90), "ms", "", "info", None, False)
    el = ex["lat"]
    add(f"`ctr task exec` true, median (n={len(el['rust'])})", median(el["rust"]), median(el["go"]), "ms", "ratio <= 0.85", "ratio", 0.85, True)
    add("`ctr task exec` true, p90", pct(el["rust"], 90), pct(el["go"], 90), "ms", "", "info", None, False)
    br, be, bc = median(rl["runc"]), median(el["runc"]), median(el["ctr"])
    add(f"  baseline: bare `runc run` /bin/true, median (p90 {pct(rl['runc'], 90):.1f} ms)", br, br, "ms", "", "base", None, False)
    add(f"  baseline: bare `runc exec` true, median (p90 {pct(el['runc'], 90):.1f} ms)", be, be, "ms", "", "base", None, False)
    add(f"  baseline: `ctr version` (ctr start-up + 1 RPC), median (p90 {pct(el['ctr'], 90):.1f} ms)", bc, bc, "ms", "", "base", None, False)
    add("  run --rm minus bare runc (shim + containerd + ctr)", median(rl["rust"]) - br, median(rl["go"]) - br, "ms", "", "info", None, True)
    add("  exec minus bare runc exec (shim + containerd + ctr)", median(el["rust"]) - be, median(el["go"]) - be, "ms", "", "info", None, True)
    add_pod()
    if "shim_cpu" in R:
        sc = R["shim_cpu"]
        add(f"Shim CPU per `ctr run --rm` (start+daemon+delete, ftrace, median of {len(sc['rust']['run'])})",
            median(sc["rust"]["run"]), median(sc["go"]["run"]), "ms", "", "info", None, True)
        add(f"Shim CPU per `ctr task exec` (ftrace, median of {len(sc['rust']['exec'])})",
            median(sc["rust"]["exec"]), median(sc["go"]["exec"]), "ms", "", "info", None, True)
        if sc["rust"]["exec_phases"] and sc["go"]["exec_phases"]:
            ph = {k: sc[k]["exec_phases"] for k in ("rust", "go")}
            n = min(len(ph["rust"]), len(ph["go"]))
            for key, what in (("pre", "ctr starts -> runc exec starts"), ("runc", "runc exec, start -> exit"),
                              ("post", "runc/process exit -> ctr exits")):
                add(f"  exec timeline (ftrace, median of {n}): {what}", median([p[key] for p in ph["rust"]]),
                    median([p[key] for p in ph["go"]]), "ms", "", "info", None, False)
    add_density()
    b = R["binary"]
    add("Binary size (release, stripped)", b["rust"], b["go"], "B", "rustshim <= 3 MB", "abs", 3_000_000, True)
    return rows


def verdict(r):
    _, rv, gv, _, _, kind, bound, _ = r
    if kind == "ratio":
        return "PASS" if gv and rv / gv <= bound + 1e-12 else "MISS"
    if kind == "ratio_min":
        return "PASS" if gv and rv / gv >= bound - 1e-12 else "MISS"
    if kind == "abs":
        return "PASS" if rv <= bound else "MISS"
    return ""


def ratio_text(rv, gv):
    try:
        if gv == 0 and rv == 0:
            return "-"
        if gv == 0:
            return "inf"
        return f"{rv / gv:.3f}"
    except TypeError:
        return "-"


def table_lines(rows):
    head = ("Metric", "rustshim", "Go shim", "ratio", "target", "result")
    body = []
    for r in rows:
        name, rv, gv, unit, tgt, kind, _, _ = r
        if kind == "base":
            body.append((name, fmt(rv, unit), "(same)", "", "", ""))
        else:
            body.append((name, fmt(rv, unit), fmt(gv, unit), ratio_text(rv, gv), tgt, verdict(r)))
    return head, body


def print_table(rows):
    head, body = table_lines(rows)
    w = [max(len(x[i]) for x in [head] + body) for i in range(6)]
    line = "  ".join(h.ljust(w[i]) for i, h in enumerate(head))
    print("\n" + line + "\n" + "-" * len(line))
    for b in body:
        print("  ".join(x.ljust(w[i]) for i, x in enumerate(b)))
    print()


def md_table(rows):
    head, body = table_lines(rows)
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---", "---"]) + "|"]
    for b in body:
        cells = list(b)
        if cells[5]:
            cells[5] = f"**{cells[5]}**"
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


def svg_chart(rows, machine):
    """Horizontal bars per metric, each normalized to the Go shim (= 100 %), target as a dashed tick."""
    items = [r for r in rows if r[7] and r[2]]
    W, left, barw, rowh = 960, 370, 460, 46
    top = 70
    H = top + rowh * len(items) + 60
    esc = lambda s: s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "")
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         f'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
         f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
         f'rustshim vs containerd-shim-runc-v2 (bar length relative to the Go shim = 100 %)</text>',
         f'<text x="{W / 2}" y="44" text-anchor="middle" fill="#555">{esc(machine)}</text>',
         f'<rect x="{left}" y="52" width="12" height="10" fill="#d9582b"/><text x="{left + 16}" y="61">rustshim</text>',
         f'<rect x="{left + 100}" y="52" width="12" height="10" fill="#3b73b9"/><text x="{left + 116}" y="61">Go shim</text>',
         f'<line x1="{left + 200}" y1="57" x2="{left + 214}" y2="57" stroke="#222" stroke-dasharray="3,2" stroke-width="2"/>'
         f'<text x="{left + 218}" y="61">target</text>']
    for i, r in enumerate(items):
        name, rv, gv, unit, _, kind, bound, _ = r
        y = top + i * rowh
        scale = max(1.0, rv / gv if gv else 1.0)
        rl, gl = barw * (rv / gv) / scale, barw / scale
        status = verdict(r)
        color = {"PASS": "#1a7f37", "MISS": "#c62828"}.get(status, "#555")
        label = re.sub(r" \((?!n=)[^)]*\)", "", name.strip())  # keep "(n=..)", drop other notes
        o.append(f'<text x="{left - 10}" y="{y + 17}" text-anchor="end">{esc(label)}</text>')
        if status:
            o.append(f'<text x="{left - 10}" y="{y + 33}" text-anchor="end" fill="{color}" font-weight="bold">{status}</text>')
        o.append(f'<rect x="{left}" y="{y + 6}" width="{max(rl, 1):.1f}" height="15" fill="#d9582b"/>')
        o.append(f'<text x="{left + max(rl, 1) + 5:.1f}" y="{y + 18}">{esc(fmt(rv, unit))}</text>')
        o.append(f'<rect x="{left}" y="{y + 23}" width="{gl:.1f}" height="15" fill="#3b73b9"/>')
        o.append(f'<text x="{left + gl + 5:.1f}" y="{y + 35}">{esc(fmt(gv, unit))}</text>')
        if kind == "ratio":
            tx = left + barw * bound / scale
            o.append(f'<line x1="{tx:.1f}" y1="{y + 3}" x2="{tx:.1f}" y2="{y + 41}" stroke="#222" stroke-dasharray="3,2" stroke-width="2"/>')
        elif kind == "abs" and gv:
            tx = left + barw * (bound / gv) / scale
            if tx <= left + barw + 1:
                o.append(f'<line x1="{tx:.1f}" y1="{y + 3}" x2="{tx:.1f}" y2="{y + 41}" stroke="#222" stroke-dasharray="3,2" stroke-width="2"/>')
    o.append(f'<text x="{left}" y="{H - 20}" fill="#555">Shorter is better for every metric. Numbers: docs/benchmarks.md.</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def machine_info():
    mem_kb = int(re.search(r"MemTotal:\s*(\d+)", read("/proc/meminfo")).group(1))
    cpu = re.search(r"model name\s*:\s*(.*)", read("/proc/cpuinfo"))
    cg = "v2 (unified)" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else \
        ("v1 hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else "v1")
    osname = "?"
    try:
        osname = re.search(r'PRETTY_NAME="(.*)"', read("/etc/os-release")).group(1)
    except (OSError, AttributeError):
        pass
    git = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False).stdout.strip() or "?"
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                check=False).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "mem_gib": mem_kb / 1024 / 1024,
        "cpu": cpu.group(1).strip() if cpu else "?",
        "kernel": os.uname().release, "os": osname, "cgroup": cg,
        "containerd": run(["containerd", "--version"], check=False).stdout.strip(),
        "runc": run(["runc", "--version"], check=False).stdout.splitlines()[0].strip(),
        "rustc": run(["rustc", "--version"], check=False).stdout.strip() if shutil.which("rustc") else "?",
        "git": git + (" + uncommitted changes in src/" if dirty else ""),
    }


def kb(v):
    return "n/a" if v is None else f"{v} kB"


def write_docs(R, rows, mi):
    os.makedirs(OUT_DIR, exist_ok=True)
    md_path = os.path.join(OUT_DIR, "benchmarks.md")
    analysis = ""
    if os.path.exists(md_path):
        m = re.search(r"<!-- analysis:start -->\n(.*?)<!-- analysis:end -->", read(md_path), re.S)
        if m:
            analysis = m.group(1)
    if not analysis.strip():
        analysis = "_No analysis written yet._\n"
    machine = (f"{mi['nproc']} CPUs ({mi['cpu']}), {mi['mem_gib']:.1f} GiB, Linux {mi['kernel']}, "
               f"cgroup {mi['cgroup']}")
    misses = [r for r in rows if verdict(r) == "MISS"]
    passes = [r for r in rows if verdict(r) == "PASS"]
    m1, ex = R["mem_one"], R["exec"]
    idle = R["idle"]["per_shim"]

    def rollup_block(k, d):
        r = d["rollup"]
        keys = ["Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous"]
        return " · ".join(f"{x} {r[x]}" for x in keys if x in r)

    def names(ns):
        c = {}
        for n in ns:
            c[n] = c.get(n, 0) + 1
        return ", ".join(f"{n} ×{v}" if v > 1 else n for n, v in c.items())

    rl, el = R["run_rm"]["lat"], ex["lat"]
    lines = [
        "# Benchmarks: rustshim vs containerd-shim-runc-v2",
        "",
        "Produced by `scripts/bench` (numbers below are from a real run; rerun to refresh).",
        "",
        f"- **Date:** {mi['date']}",
        f"- **Machine:** {machine}; {mi['os']}",
        f"- **containerd:** {mi['containerd']}",
        f"- **runc:** {mi['runc']}",
        f"- **rustshim:** git {mi['git']}, {mi['rustc']}, release profile (opt-level s, fat LTO, panic=abort), static non-PIE, functions laid out by scripts/layout/symbol-order.txt, stripped (scripts/build-release.sh)",
        f"- **Go shim:** `{mi.get('go_shim', 'containerd-shim-runc-v2')}` from the same Debian containerd package",
        f"- **Run settings:** {N_IDLE} idle containers/runtime, {N_EXECS} execs, {N_RUNS} `ctr run --rm` samples, "
        f"{IDLE_SECS} s idle window, density {N_DENSITY if N_DENSITY else 'skipped'} ×{PAR}, "
        f"CRI pod start {len(R['pod']['rust']) if 'pod' in R else 'skipped'}; "
        f"load average during the latency step {' '.join(R['run_rm']['loadavg_before'])} → {' '.join(R['run_rm']['loadavg_after'])}",
        f"- **Summary:** {len(passes)} targets PASS, {len(misses)} MISS"
        + (": " + "; ".join(r[0].strip() for r in misses) if misses else ""),
        "",
        "![rustshim vs Go shim](bench.svg)",
        "",
        md_table(rows),
        "",
        "Ratios are rustshim / Go shim from the same run. PSS is from `/proc/PID/smaps_rollup` (shared pages",
        "divided among the processes mapping them, so with 20 shims of a kind each carries 1/20 of its binary's",
        "text), RSS likewise; threads from `/proc/PID/status`. Idle cost is measured over the same window for",
        f"all {2 * N_IDLE} idle shims; context switches are `voluntary_ctxt_switches` summed over",
        "`/proc/PID/task/*/status` (the process-level file only counts the main thread). Latencies are wall",
        "times of the whole `ctr` command (ctr start-up + containerd + shim + runc), runtimes interleaved",
        "sample by sample with a rotating order; the bare-runc baseline is measured in the same rotation with",
        "a `runc spec` bundle over a busybox rootfs directory (no containerd, no shim), so",
        "\"minus bare runc\" is what containerd + ctr + the shim add on top of runc.",
        "CRI pod start is kubelet's side instead of ctr's: the ignored cargo test",
        "`tests/cri-e2e/tests/bench_pod_start.rs` starts a second private containerd (same binary, CRI",
        "enabled, handlers `rustshim` and `runc`, rustshim from this run's release copy) and times",
        "RunPodSandbox + CreateContainer + StartContainer of a host-network pod with one busybox `sleep`,",
        "gRPC over the unix socket from one client; samples alternate rustshim/Go after 2 discarded",
        "warm-ups each, and every pod is stopped, removed and its shim gone (untimed) before the next.",
        "p50 is the median, p90 nearest-rank.",
        f"Density: {N_DENSITY} idle `sleep` containers per runtime (`ctr run -d`, {PAR} at a time), one runtime",
        "after the other; with all of them up (3 s after the last start) every shim's `smaps_rollup` is read",
        "once: total PSS and RSS are sums over the shims, per shim the median. PSS per shim among that many",
        "is informational (its binary's text divided by the number of shims); the PSS targets are the rows",
        "above. containerd's own RSS is read at the same moment. Then all are killed (SIGKILL) and",
        f"deleted, {PAR} at a time; both walls are the whole phase. The step stops starting early, and the",
        "rows say how many were held of how many requested, when a start fails or before the machine runs",
        "short (MemAvailable under 2 GiB, tasks within 2,000 of pid_max); the private containerd runs with",
        "containerd.service's LimitNOFILE=infinity.",
        "",
        "## How to run",
        "",
        "```sh",
        "scripts/bench                   # full run, as root; ~5 min on 2 cores plus the release build; rewrites docs/benchmarks.md + docs/bench.svg",
        "BENCH_SCALE=0 scripts/bench     # quick run (~1.5 min): skip the 1,000-container density step",
        "BENCH_SCALE=200 BENCH_DOCS=0 scripts/bench   # smaller density step, table on stdout only",
        "BENCH_ONLY=density scripts/bench   # only the density rows (~3.5 min), docs left alone",
        "```",
        "",
        "It installs what is missing (`containerd runc busybox-static` and build tools via apt), runs",
        "`scripts/build-release.sh`, starts a private containerd in `/tmp/rsb.*` (own `config.toml`, root, state,",
        "socket; CRI disabled) with `target/release` first on `PATH`, works in namespace `bench`, and at the",
        "end deletes every container, stops that containerd, kills any shim of it still alive and removes the",
        "temp dir. Other knobs: `BENCH_IDLE`, `BENCH_EXECS`, `BENCH_N`, `BENCH_IDLE_SECS`, `BENCH_PAR`,",
        "`BENCH_POD` (CRI pod starts per runtime, 0 = skip; needs cargo and protoc), `BENCH_NS`, `BENCH_OUT`,",
        "`BENCH_NO_BUILD=1`, `BENCH_JSON=file` (raw numbers); see the header of `scripts/bench`.",
        "",
        "## Analysis",
        "",
        "<!-- analysis:start -->",
        analysis.rstrip("\n"),
        "<!-- analysis:end -->",
        "",
        "## Details from this run",
        "",
        f"- smaps_rollup, rustshim with 1 idle container: {rollup_block('rust', m1['rust'])}",
        f"- smaps_rollup, Go shim with 1 idle container: {rollup_block('go', m1['go'])}",
        f"- smaps_rollup, rustshim after {N_EXECS} execs: {rollup_block('rust', ex['after']['rust'])}",
        f"- smaps_rollup, Go shim after {N_EXECS} execs: {rollup_block('go', ex['after']['go'])}",
        f"- threads (comm), rustshim idle: {names(m1['rust']['thread_names'])}; after execs: {names(ex['after']['rust']['thread_names'])}",
        f"- threads (comm), Go shim idle: {names(m1['go']['thread_names'])}; after execs: {names(ex['after']['go']['thread_names'])}",
        f"- idle window: rustshim vcsw per shim {sorted(r['vcsw'] for r in idle['rust'])}, "
        f"threads that woke per shim {sorted(r['waking_threads'] for r in idle['rust'])}",
        f"- idle window: Go shim vcsw per shim {sorted(r['vcsw'] for r in idle['go'])}, "
        f"threads that woke per shim {sorted(r['waking_threads'] for r in idle['go'])}",
        f"- PSS of the {N_IDLE} idle shims (kB): rustshim {sorted(R['mem_many']['rust']['pss'])}; Go {sorted(R['mem_many']['go']['pss'])}",
        f"- latency samples (ms, sorted): run --rm rustshim {[round(x, 1) for x in sorted(rl['rust'])]}",
        f"- run --rm Go {[round(x, 1) for x in sorted(rl['go'])]}",
        f"- bare runc run {[round(x, 1) for x in sorted(rl['runc'])]}",
        f"- exec rustshim {[round(x, 1) for x in sorted(el['rust'])]}",
        f"- exec Go {[round(x, 1) for x in sorted(el['go'])]}",
        f"- bare runc exec {[round(x, 1) for x in sorted(el['runc'])]}",
        f"- ctr version {[round(x, 1) for x in sorted(el['ctr'])]}",
    ]
    if "pod" in R:
        pod = R["pod"]
        lines.append(f"- CRI pod start rustshim {[round(x, 1) for x in sorted(pod['rust'])]}")
        lines.append(f"- CRI pod start Go {[round(x, 1) for x in sorted(pod['go'])]} "
                     f"({pod.get('go_shim', '?')}; {pod.get('containerd', '?')})")
    if "density" in R:
        d = R["density"]
        for k, name in (("rust", "rustshim"), ("go", "Go shim")):
            x, c = d[k], d[k]["containerd_up"] or {}
            lines.append(f"- density, {name}: held {x['n']} of {x['n_req']}"
                         + (f" (stopped: {x['why']})" if x["why"] else "")
                         + f"; PSS per shim min/median/max {min(x['pss_kb'], default=0)}/{x['pss_med_kb']:.0f}/"
                         f"{max(x['pss_kb'], default=0)} kB; containerd with all up: RSS {c.get('rss')} kB, "
                         f"{c.get('fds')} fds (RLIMIT_NOFILE {x['containerd_nofile'][0] if x['containerd_nofile'] else '?'}); "
                         f"{x['tasks_up']} tasks on the machine; MemAvailable down {x['mem_available_drop_kb'] // 1024} MiB; "
                         f"shims left after teardown: {x['shims_left']}")
    lines.append("")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(OUT_DIR, "bench.svg"), "w") as f:
        f.write(svg_chart(rows, f"{mi['date']} · {machine} · {mi['containerd'].split()[-1] if mi['containerd'] else ''}"))
    log(f"wrote {os.path.relpath(md_path, REPO)} and {os.path.relpath(os.path.join(OUT_DIR, 'bench.svg'), REPO)}")


# ---- main --------------------------------------------------------------------------

def main():
    if os.geteuid() != 0:
        sys.exit("bench.py must run as root")
    if not os.access(RUST_BIN, os.X_OK):
        sys.exit(f"{RUST_BIN} missing: scripts/build-release.sh first")
    go_bin = shutil.which("containerd-shim-runc-v2")
    if not go_bin:
        sys.exit("containerd-shim-runc-v2 not found")
    if ONLY not in ("", "log", "pod", "density"):
        sys.exit(f"BENCH_ONLY={ONLY}: only \"log\", \"pod\" or \"density\"")
    if ONLY == "density" and N_DENSITY == 0:
        sys.exit("BENCH_ONLY=density with BENCH_SCALE=0: nothing to run")
    pod_skip = "BENCH_POD=0" if N_POD == 0 else None
    if pod_wanted():
        try:
            pod_skip = pod_prepare()
        except BenchError as e:
            sys.exit(f"[bench] {e}")
    if pod_skip:
        if ONLY == "pod":
            sys.exit(f"BENCH_ONLY=pod, but the CRI pod-start step cannot run: {pod_skip}")
        log(f"skipping the CRI pod-start step: {pod_skip}")

    def on_term(signum, _):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    t_start = time.monotonic()
    R = {"binary": {"rust": os.path.getsize(RUST_BIN), "go": os.path.getsize(go_bin)}}
    mi = machine_info()
    mi["go_shim"] = go_bin
    env = Env()
    log(f"private containerd in {env.dir}, namespace {NS}, run tag {TAG}")
    ok = False
    try:
        env.start(go_bin)
        if ONLY != "pod":  # the pod step imports its own images into its own containerd
            log("image: scripts/make-image.sh + ctr images import")
            img = os.path.join(env.dir, "rsbox.tar")
            run(["bash", os.path.join(REPO, "scripts", "make-image.sh"), img, IMAGE])
            run(env.ctr("images", "import", img))
        if ONLY in ("", "log"):
            step_log_throughput(env, R)
        if ONLY == "":
            bundles = make_bundles(env)
            ids = step_memory_and_idle(env, R)
            step_exec(env, R, ids, bundles)
            log("removing the idle containers")
            env.remove_all()
            step_run_rm(env, R, bundles)
            if N_TRACE > 0:
                step_shim_cpu(env, R)
        if N_DENSITY > 0 and ONLY in ("", "density"):
            step_density(env, R)
        if pod_wanted() and not pod_skip:
            step_pod_start(env, R)
        ok = True
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
    except Exception as e:
        log(f"FAILED: {e}")
        tail = env.log_tail(15)
        if tail:
            print("--- containerd.log (tail) ---\n" + tail, file=sys.stderr)
    finally:
        errs = env.cleanup()
        for e in errs:
            log(f"cleanup: {e}")
        if not errs:
            log("cleanup done: containers deleted, containerd stopped, no shims left, temp dir removed")
    if not ok:
        return 1
    R["machine"] = mi
    R["elapsed_s"] = time.monotonic() - t_start
    rows = build_rows(R)
    print_table(rows)
    if JSON_OUT:
        with open(JSON_OUT, "w") as f:
            json.dump(R, f, indent=1, default=str)
    if WRITE_DOCS:
        write_docs(R, rows, mi)
    log(f"total {R['elapsed_s']:.0f} s; {sum(1 for r in rows if verdict(r) == 'PASS')} PASS, "
        f"{sum(1 for r in rows if verdict(r) == 'MISS')} MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
