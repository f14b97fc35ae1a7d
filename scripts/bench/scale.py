#!/usr/bin/env python3
"""How the cost grows with the number of locks, for scripts/bench/scale.sh: prints rows of a
markdown table.

    scale.py held --elect E --label L --backend URL --kind K --counts 1,100,1000 --window S
                  [--port P] [--server-pid PID] [--pg-user U] [--pg-db D]

For each count N: N elects each hold their own lock (`--lock scale-I`) and supervise `sleep`.
Once every job runs, over the window: the server's requests/s and CPU ms/s (as in measure.py
contention), elect's proportional set size (PSS, /proc/PID/smaps_rollup) per supervised job
(elect and its watchdog), and the wall time of one `elect status` that lists every lock (median
of three). Then the elects are stopped (SIGTERM: each stops its job and releases).

Every wait is bounded, and every process started here is stopped here (by its pid).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import measure  # noqa: E402  (the helpers and the server counters of measure.py)


def pss_kb(pid):
    """Proportional set size of PID in kB: shared pages count divided by their sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_holders(args, n, d):
    """N elects, each holding lock scale-I with `sleep` as its job; returns them once every job
    has started (at most 180 s)."""
    procs = []
    for i in range(n):
        marker = os.path.join(d, f"up-{i}")
        cmd = [args.elect, "run", "-q", "--lock", f"scale-{i}", "--backend", args.backend,
               "--", "sh", "-c", f": > {marker}; exec sleep 100000"]
        procs.append(measure.spawn(cmd))
        # In batches, so that the server sees a queue of connections rather than a wall.
        if i % 100 == 99:
            wait_markers(d, i + 1, procs, 120)
    wait_markers(d, n, procs, 180)
    return procs


def wait_markers(d, n, procs, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for f in os.listdir(d) if f.startswith("up-")) >= n:
            return
        dead = [p.returncode for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{len(dead)} holders exited before their jobs ran (codes {sorted(set(dead))})")
        time.sleep(0.05)
    raise RuntimeError(f"not all of {n} holders' jobs started within {timeout} s")


def status_ms(args, n):
    """Median wall time of `elect status` (every lock), which must list at least N locks."""
    times = []
    for _ in range(3):
        t0 = time.monotonic_ns()
        out = subprocess.run([args.elect, "status", "--backend", args.backend], capture_output=True,
                             text=True, timeout=60)
        times.append(time.monotonic_ns() - t0)
        listed = sum(1 for line in out.stdout.splitlines() if line.startswith("scale-"))
        if listed < n:
            raise RuntimeError(f"elect status listed {listed} of {n} held locks: {out.stderr.strip()}")
    return statistics.median(times) / 1e6


def cmd_held(args):
    server = measure.ServerStats(args)
    for n in [int(c) for c in args.counts.split(",")]:
        d = tempfile.mkdtemp(prefix="elect-bench-scale.")
        procs = []
        try:
            procs = start_holders(args, n, d)
            time.sleep(2)
            r0, s0, t0 = server.requests(), server.cpu_ns(), time.monotonic()
            time.sleep(args.window)
            r1, s1 = server.requests(), server.cpu_ns()
            span = time.monotonic() - t0
            rate = None if r0 is None else (r1 - r0 - server.own_cost()) / span
            cpu = None if s0 is None else (s1 - s0) / 1e6 / span
            pss = sum(pss_kb(p.pid) + sum(pss_kb(c) for c in measure.children(p.pid)) for p in procs)
            listing = status_ms(args, n)
        finally:
            measure.stop(procs, timeout=60)
            subprocess.run(["rm", "-rf", d])

        def num(v, f="{:.0f}"):
            return "n/a" if v is None else f.format(v)

        print(f"| {args.label} | {n} | {num(rate, '{:.1f}')} | {num(cpu)} | {pss / n / 1024:.2f} | {listing:.0f} |")
        sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("held")
    p.add_argument("--elect", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--kind", choices=["redis", "etcd", "postgres"], required=True)
    p.add_argument("--counts", default="1,100,1000")
    p.add_argument("--window", type=float, default=5)
    p.add_argument("--port", type=int)
    p.add_argument("--server-pid", type=int)
    p.add_argument("--pg-user", default="bench")
    p.add_argument("--pg-db", default="bench")
    args = ap.parse_args()
    globals()["cmd_" + args.cmd](args)


if __name__ == "__main__":
    main()
