"""Regenerate scripts/layout/symbol-order.txt, the order in which the linker lays out the release
shim's functions (scripts/profile-layout.sh runs this; see scripts/build-release.sh for why).

Why: the kernel maps a file's pages 64 KiB around each page fault (fault-around), so an idle shim
that has run a few hundred functions scattered over its 1.7 MB of text has nearly all of it
mapped, and a lone shim's PSS is its whole binary. Packing the functions an idle shim has run at
the front of the text maps only those windows.

How, in two kinds of pass against a private containerd (bench.py's Env, namespace layout):
1. callgrind: the shim daemon runs under valgrind through a wrapper; `callgrind_control -d` at
   idle and again after three execs splits the profile into what ran before idle (create,
   start), for the execs, and after (ps, metrics, pause, resume, kill, delete). Order =
   before-idle, then glibc's string-function variants (valgrind's CPU makes glibc pick other
   ones than real hardware does), then the exec path, then the rest.
2. touched pages: callgrind misses what only real hardware runs (CPU-dependent code, timing).
   With the block device's readahead at 0 and the binary's page cache dropped, the page cache
   holds only the pages something touched, so fault-around maps only those: the shim's pagemap
   is then the exact set of text pages an idle shim touched. Every function on a touched page
   outside the packed front goes to the front; repeated until no new ones (at most 4 passes).
   The device's readahead is restored on every exit path.

Symbol names must be those of the build that uses the file: it is made from build-release.sh's
own unstripped binary (names carry a hash of the profile, see build-release.sh).
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
os.environ.setdefault("BENCH_NS", "layout")
sys.path.insert(0, HERE)
import bench as B  # noqa: E402  (the private containerd, image and cleanup of scripts/bench)

TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"), "release")
BIN = os.path.join(TARGET, "containerd-shim-rustshim-v2")
OUT = os.path.join(REPO, "scripts", "layout", "symbol-order.txt")
CODE_TYPES = set("tTwWiI")
# glibc's IFUNC variants of the string functions: which one runs depends on the CPU
STRING_VARIANT = re.compile(r"^__(?:mem|str|wmem|wcs|raw|stp|bzero)[a-z0-9]*_(?:sse|avx|evex|erms|ssse|unaligned)")
IDLE_SECS = 3


def log(msg):
    print(f"[layout] {msg}", flush=True)


def build(order_file):
    env = dict(os.environ, RUSTSHIM_SYMBOL_ORDER=order_file or "none")
    subprocess.run(["bash", os.path.join(REPO, "scripts", "build-release.sh"), "--quiet"], check=True, env=env)
    return BIN + ".unstripped"


def symbols(path):
    """[(addr, size, name)] of the code symbols of an unstripped binary, by address."""
    out = subprocess.run(["nm", "-n", "-S", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[2] in CODE_TYPES:
            rows.append((int(p[0], 16), int(p[1], 16), p[3]))
    return rows


def callgrind_names(path):
    """Function names in a callgrind profile, first appearance first."""
    names, seen = [], set()
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^c?fn=\(\d+\) (.+)$", line.rstrip("\n"))
            if m and m.group(1) not in seen:
                seen.add(m.group(1))
                names.append(m.group(1))
    return names


def pids_running(pattern):
    p = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(x) for x in p.stdout.split()]


class Readahead:
    """Sets the readahead of the device holding `path` to 0; restore() puts it back."""

    def __init__(self, path):
        dev = os.stat(path).st_dev
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        knob = os.path.join(base, "queue", "read_ahead_kb")
        if not os.path.exists(knob):  # a partition: the queue is its disk's
            knob = os.path.join(base, "..", "queue", "read_ahead_kb")
        self.knob = os.path.realpath(knob)
        with open(self.knob) as f:
            self.saved = f.read().strip()
        self.changed = False

    def zero(self):
        with open(self.knob, "w") as f:
            f.write("0")
        self.changed = True

    def restore(self):
        if self.changed:
            with open(self.knob, "w") as f:
                f.write(self.saved)
            self.changed = False


def with_containerd(shim, fn):
    """Runs fn(env) against a private containerd whose rustshim is `shim` (a file to copy)."""
    B.RUST_BIN = shim
    env = B.Env()
    try:
        env.start(shutil.which("containerd-shim-runc-v2"))
        img = os.path.join(env.dir, "rsbox.tar")
        B.run(["bash", os.path.join(REPO, "scripts", "make-image.sh"), img, B.IMAGE])
        B.run(env.ctr("images", "import", img))
        return fn(env)
    finally:
        errs = env.cleanup()
        for e in errs:
            log(f"cleanup: {e}")


def callgrind_pass(unstripped):
    """(before-idle names, after-idle names) of one container's life under callgrind."""
    work = os.path.join("/tmp", f"rslayout.{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    wrapper = os.path.join(work, "containerd-shim-rustshim-v2")
    with open(wrapper, "w") as f:
        # runc, the container's processes and sh stay native: only the shim is profiled
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --demangle=no --trace-children=yes "
                "--trace-children-skip='*runc*,*busybox*,*sh' "
                f"--callgrind-out-file={work}/cg.%p -q {unstripped} \"$@\"\n")
    os.chmod(wrapper, 0o755)

    def life(env):
        cid = f"{B.TAG}-cg"
        env.run_detached("rust", cid)
        time.sleep(IDLE_SECS)
        daemons = [p for p in pids_running(f"{re.escape(unstripped)} .*-id {cid}")
                   if not open(f"/proc/{p}/cmdline", "rb").read().rstrip(b"\0").endswith(b"start")]
        if len(daemons) != 1:
            raise RuntimeError(f"expected one shim daemon under valgrind, found {daemons}")
        B.run(["callgrind_control", "-d", "idle", str(daemons[0])])
        time.sleep(1)
        for i in range(3):
            B.run(env.ctr("task", "exec", "--exec-id", f"e{i}", cid, "echo", "hi"))
        # A second split: the exec path comes right after the front, so that a shim running
        # execs (probes) while its neighbours idle maps few windows of its own.
        B.run(["callgrind_control", "-d", "exec", str(daemons[0])])
        time.sleep(1)
        for args in (("task", "ps", cid), ("task", "metrics", cid), ("task", "pause", cid),
                     ("task", "resume", cid), ("task", "ls")):
            B.run(env.ctr(*args))
        env.remove(cid)
        time.sleep(2)  # the daemon writes its final profile as it exits
        return daemons[0]

    try:
        daemon = with_containerd(wrapper, life)
        before = callgrind_names(f"{work}/cg.{daemon}.1")
        execs = callgrind_names(f"{work}/cg.{daemon}.2")
        after = callgrind_names(f"{work}/cg.{daemon}")
        for other in glob.glob(f"{work}/cg.*"):  # the short-lived `start` and `delete` runs
            if not other.startswith(f"{work}/cg.{daemon}"):
                after += callgrind_names(other)
        return before, execs, after
    finally:
        shutil.rmtree(work, ignore_errors=True)


def touched_pass(stripped, syms):
    """Names of the functions on the text pages an idle shim touched (readahead off)."""
    ra = Readahead("/tmp")

    def idle(env):
        # Env.start dropped the copy's page cache: what is cached from here on was touched
        ra.zero()
        try:
            cid = f"{B.TAG}-touch"
            env.run_detached("rust", cid)
            time.sleep(IDLE_SECS)
            pid = env.shim_pid(cid)
            text = None
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    p = line.split()
                    if p[1] == "r-xp" and len(p) > 5 and p[5].endswith("/containerd-shim-rustshim-v2"):
                        lo, hi = (int(x, 16) for x in p[0].split("-"))
                        text = (lo, hi)
            if not text:
                raise RuntimeError("no text mapping of the shim found")
            pages = set()
            fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
            try:
                for a in range(text[0], text[1], 4096):
                    if int.from_bytes(os.pread(fd, 8, a // 4096 * 8), "little") >> 63:
                        pages.add(a)
            finally:
                os.close(fd)
            env.remove(cid)
            return pages
        finally:
            ra.restore()

    pages = with_containerd(stripped, idle)
    hit = []
    for addr, size, name in syms:
        first, last = addr // 4096 * 4096, (addr + max(size, 1) - 1) // 4096 * 4096
        if any(p in pages for p in range(first, last + 4096, 4096)):
            hit.append(name)
    return hit, len(pages)


def write_order(path, names, header):
    with open(path, "w") as f:
        for h in header:
            f.write(f"# {h}\n")
        f.write("\n".join(names) + "\n")


def main():
    if os.geteuid() != 0:
        sys.exit("layout.py must run as root (containerd, runc, the device's readahead)")
    for tool in ("valgrind", "callgrind_control", "nm", "pgrep"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install valgrind binutils procps)")

    def on_term(signum, _):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    log("release build without an order file (for the names)")
    unstripped = build(None)
    syms = symbols(unstripped)
    known = {n for _, _, n in syms}
    log("callgrind pass")
    before, exec_names, after = callgrind_pass(unstripped)
    strings = [n for n in known if STRING_VARIANT.match(n)]
    front = [n for n in before if n in known] + sorted(strings)
    order = list(dict.fromkeys(front + [n for n in exec_names + after if n in known]))
    log(f"{len(front)} functions before idle, {len(order)} in all")
    tmp = OUT + ".tmp"
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    try:
        for i in range(4):
            write_order(tmp, order, [])
            unstripped = build(tmp)
            syms = symbols(unstripped)
            hot = set(front)
            hit, npages = touched_pass(BIN, syms)
            new = [n for n in hit if n not in hot]
            log(f"touched pass {i + 1}: {npages} text pages touched, {len(new)} functions not yet in front")
            if not new:
                break
            front = new + front
            order = list(dict.fromkeys(front + order))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Within each part the order matters little (all of the front is mapped anyway): sorted, so
    # a regenerated file differs from the last one only where the profile did.
    front_set = set(front)
    exec_part = [n for n in dict.fromkeys(exec_names) if n in known and n not in front_set]
    exec_set = set(exec_part)
    order = (sorted(front_set) + sorted(exec_set)
             + sorted(n for n in order if n not in front_set and n not in exec_set))
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    write_order(OUT, order, [
        "Function layout of the release shim: made by scripts/profile-layout.sh, used by",
        "scripts/build-release.sh (lld --symbol-ordering-file). The first ones ran before a shim",
        f"went idle. Generated {time.strftime('%Y-%m-%d')} with {rustc}; names carry hashes of",
        "the toolchain and dependencies, so after an upgrade regenerate it (stale names are skipped).",
    ])
    log(f"wrote {os.path.relpath(OUT, REPO)}: {len(order)} functions, {len(front)} in front")
    build(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
