#!/usr/bin/env python3
"""Measurements for scripts/bench.sh that need more than hyperfine: each subcommand runs one
experiment against a running backend and prints markdown (a table, or rows of one).

    measure.py wall JSON [--target NAME=RATIO ...]      hyperfine JSON -> table, first row vs the rest
    measure.py handover   --elect E --label L [--backend URL] --rounds N
    measure.py takeover   --elect E --label L [--backend URL] --rounds N --ttl 2s --grace 500ms --what elect|host
    measure.py memory     --elect E LABEL=URL ...        (URL "-" means the default file backend)
    measure.py contention --elect E --label L [--backend URL] --n N --window S [--period P] --kind K ...

Every wait here is bounded, and every process started here is stopped here (by its pid).
Times of the jobs come from `date +%s%N` run by the job itself, compared with time.time_ns() here
or with the other job's stamp: both are CLOCK_REALTIME on the same machine.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request



# ---------------------------------------------------------------------------------------- helpers


def fmt_ms(ns):
    return f"{ns / 1e6:.1f}"


def summary(values):
    s = sorted(values)
    return s[0], statistics.median(s), s[-1]


def elect_cmd(args, lock, *extra, job):
    cmd = [args.elect, "run", "-q", "--lock", lock]
    if args.backend:
        cmd += ["--backend", args.backend]
    cmd += list(extra)
    cmd += ["--", "sh", "-c", job]
    return cmd


def spawn(cmd):
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for_file(path, timeout, procs=()):
    """Wait until PATH exists and is not empty; fail early if one of PROCS has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.path.getsize(path) > 0:
                return True
        except OSError:
            pass
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[:6]}... exited with {p.returncode} before {path} appeared")
        time.sleep(0.002)
    raise RuntimeError(f"{path} did not appear within {timeout} s")


def read_ns(path):
    with open(path) as f:
        return int(f.read().split()[0])


def stop(procs, timeout=10.0):
    """SIGTERM each process that still runs, wait at most TIMEOUT in all, SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def alive(pid):
    """True while PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_ns(pid):
    """CPU time used so far by all threads of PID, in ns (schedstat: exact, not tick-sampled)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def verdict(value, target, unit=""):
    if target is None:
        return "—"
    return f"met (≤ {target:g}{unit})" if value <= target else f"**missed** (> {target:g}{unit})"


# ------------------------------------------------------------------------------------------- wall


def cmd_wall(args):
    # Several hyperfine exports of the same commands (rounds run one after the other, so that
    # a change of load on the machine hits every command alike): merge them by command name.
    results = []
    for path in args.json:
        with open(path) as f:
            for r in json.load(f)["results"]:
                same = [m for m in results if m["command"] == r["command"]]
                if same:
                    m = same[0]
                    n, k = len(m["times"]), len(r["times"])
                    m["user"] = (m["user"] * n + r["user"] * k) / (n + k)
                    m["system"] = (m["system"] * n + r["system"] * k) / (n + k)
                    m["times"] += r["times"]
                else:
                    results.append(r)
    targets = dict(t.split("=", 1) for t in args.target)
    first = results[0]
    fmin, fmed, fmax = summary(first["times"])
    print(f"| command | runs | min ms | median ms | max ms | CPU ms (user + sys, mean) | {first['command']} ÷ this (min / median / max) | target (median) |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        mn, md, mx = summary(r["times"])
        row = f"| `{r['command']}` | {len(r['times'])} | {mn * 1e3:.2f} | {md * 1e3:.2f} | {mx * 1e3:.2f} | {r['user'] * 1e3:.2f} + {r['system'] * 1e3:.2f} |"
        if r is first:
            row += " — | — |"
        else:
            ratio = fmed / md
            row += f" {fmin / mn:.2f}× / **{ratio:.2f}×** / {fmax / mx:.2f}× |"
            t = targets.get(r["command"])
            row += f" {verdict(round(ratio, 2), float(t), '×')} |" if t else " — |"
        print(row)
    # Machine-readable line for the caller (not part of the table).
    ratios = {r["command"]: fmed / summary(r["times"])[1] for r in results[1:]}
    print(json.dumps({"ratios": ratios}), file=sys.stderr)


# --------------------------------------------------------------------------------------- handover


def cmd_handover(args):
    """The holder's job stamps its end and exits; a contender already --wait'ing stamps its start."""
    values = []
    with tempfile.TemporaryDirectory(prefix="elect-bench-hand.") as d:
        held, end, start = (os.path.join(d, n) for n in ("held", "end", "start"))
        for i in range(args.rounds):
            for p in (held, end, start):
                if os.path.exists(p):
                    os.unlink(p)
            holder = spawn(elect_cmd(args, "hand", job=f"echo 1 > {held}; sleep {args.hold}; date +%s%N > {end}"))
            contender = None
            try:
                wait_for_file(held, 30, [holder])
                contender = spawn(elect_cmd(args, "hand", "--wait", job=f"date +%s%N > {start}"))
                holder.wait(timeout=30)
                contender.wait(timeout=30)
                if holder.returncode != 0 or contender.returncode != 0:
                    raise RuntimeError(f"round {i}: holder exited {holder.returncode}, contender {contender.returncode}")
                values.append(read_ns(start) - read_ns(end))
            finally:
                stop([p for p in (holder, contender) if p])
    if min(values) < 0:
        raise RuntimeError("a contender's job started before the holder's ended: hold time too short")
    mn, md, mx = summary(values)
    print(f"| {args.label} | {len(values)} | {fmt_ms(mn)} | {fmt_ms(md)} | {fmt_ms(mx)} | {verdict(md / 1e6, args.target, ' ms')} |")


# --------------------------------------------------------------------------------------- takeover


def lose(holder, job, what):
    """WHAT=elect: SIGKILL the holding elect alone (its watchdog stops the job and has the lease
    released). WHAT=host: as if the host vanished: elect, its watchdog and the job are frozen
    together (SIGSTOP, so that none of them acts on another's end), then killed; nothing is left
    to release the lease, which expires by its ttl."""
    if what == "elect":
        holder.kill()
        return
    pids = [holder.pid] + children(holder.pid) + [job]
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def cmd_takeover(args):
    """SIGKILL a holder whose job sleeps (see `lose`); time until a --wait'ing contender's job
    starts, and until the dead holder's job is gone (its watchdog stops it)."""
    takeover, job_gone = [], []
    lease = ["--ttl", args.ttl, "--grace", args.grace]
    with tempfile.TemporaryDirectory(prefix="elect-bench-take.") as d:
        jobpid, start = os.path.join(d, "jobpid"), os.path.join(d, "start")
        for i in range(args.rounds):
            for p in (jobpid, start):
                if os.path.exists(p):
                    os.unlink(p)
            holder = spawn(elect_cmd(args, "take", *lease, job=f"echo $$ > {jobpid}; exec sleep 100"))
            contender = None
            job = None
            try:
                wait_for_file(jobpid, 30, [holder])
                job = int(open(jobpid).read())
                contender = spawn(elect_cmd(args, "take", "--wait", *lease, job=f"date +%s%N > {start}"))
                time.sleep(args.settle)
                if contender.poll() is not None:
                    raise RuntimeError(f"round {i}: contender exited {contender.returncode} before the kill")
                killed = time.time_ns()
                lose(holder, job, args.what)
                gone = None
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and (gone is None or contender.poll() is None):
                    if gone is None and not alive(job):
                        gone = time.time_ns()
                    time.sleep(0.001)
                if contender.poll() is None:
                    raise RuntimeError(f"round {i}: no takeover within 30 s")
                takeover.append(read_ns(start) - killed)
                job_gone.append(gone - killed)
            finally:
                stop([p for p in (holder, contender) if p])
                if job and alive(job):
                    os.kill(job, signal.SIGKILL)
    mn, md, mx = summary(takeover)
    gmn, gmd, gmx = summary(job_gone)
    died = {"elect": "elect killed, host alive", "host": "host lost (no release possible)"}[args.what]
    print(f"| {args.label} | {died} | {args.ttl} / {args.grace} | {len(takeover)} | {fmt_ms(mn)} | {fmt_ms(md)} | {fmt_ms(mx)} "
          f"| {fmt_ms(gmd)} (max {fmt_ms(gmx)}) | {verdict(md / 1e6, args.target, ' ms')} |")


# ----------------------------------------------------------------------------------------- memory


def cmd_memory(args):
    """Peak RSS (VmHWM) of elect and of its watchdog child, each supervising `sleep`."""
    running = []
    for spec in args.backends:
        label, url = spec.split("=", 1)
        cmd = [args.elect, "run", "-q", "--lock", "mem"]
        if url != "-":
            cmd += ["--backend", url]
        running.append((label, spawn(cmd + ["--", "sleep", str(args.sleep)])))
    time.sleep(args.sleep - 1)
    rows = []
    for label, p in running:
        if p.poll() is not None:
            raise RuntimeError(f"{label}: elect exited {p.returncode} before it was measured")
        kids = children(p.pid)
        if len(kids) != 1:
            raise RuntimeError(f"{label}: expected one watchdog child of elect, found {kids}")
        e, w = status_kb(p.pid, "VmHWM"), status_kb(kids[0], "VmHWM")
        rows.append(f"| {label} | {e / 1024:.1f} | {w / 1024:.1f} | {(e + w) / 1024:.1f} |")
    for _, p in running:
        p.wait(timeout=30)
    print("\n".join(rows))


# ------------------------------------------------------------------------------------- contention


class ServerStats:
    """Request counter and CPU time of the backend's server process(es)."""

    def __init__(self, args):
        self.kind = args.kind
        self.args = args

    def requests(self):
        a = self.args
        if self.kind == "redis":
            out = subprocess.run(["redis-cli", "-p", str(a.port), "INFO", "stats"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            for line in out.splitlines():
                if line.startswith("total_commands_processed:"):
                    return int(line.split(":")[1])
        elif self.kind == "etcd":
            with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/metrics", timeout=10) as r:
                text = r.read().decode()
            return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("grpc_server_msg_received_total{")))
        elif self.kind == "postgres":
            out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(a.port), "-U", a.pg_user, "-d", a.pg_db,
                                  "-qAtc", "select coalesce(sum(calls), 0) from pg_stat_statements"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            return int(out.strip())
        elif self.kind == "zk":
            with socket.create_connection(("127.0.0.1", a.port), timeout=10) as c:
                c.sendall(b"mntr")
                text = b"".join(iter(lambda: c.recv(65536), b"")).decode()
            return int(next(line.split()[1] for line in text.splitlines() if line.startswith("zk_packets_received")))
        return None

    def waiting(self):
        """Clients blocked in a command (Redis: waiters in BLPOP); None where the server cannot tell."""
        if self.kind != "redis":
            return None
        out = subprocess.run(["redis-cli", "-p", str(self.args.port), "INFO", "clients"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
        return next((int(line.split(":")[1]) for line in out.splitlines() if line.startswith("blocked_clients:")), 0)

    # Requests that one call of requests() itself adds to the next reading (INFO; the SELECT on
    # pg_stat_statements; /metrics is plain HTTP and not a gRPC message).
    def own_cost(self):
        return {"redis": 1, "postgres": 1}.get(self.kind, 0)

    def cpu_ns(self):
        if not self.args.server_pid:
            return None
        pids = [self.args.server_pid]
        if self.kind == "postgres":
            pids += children(self.args.server_pid)
        return sum(cpu_ns(p) for p in pids)


def cmd_contention(args):
    server = ServerStats(args)
    d = tempfile.mkdtemp(prefix="elect-bench-cont.")
    jobpid, starts = os.path.join(d, "jobpid"), os.path.join(d, "starts")
    holder = spawn(elect_cmd(args, "herd", job=f"echo $$ > {jobpid}; exec sleep 1000"))
    contenders = []
    try:
        wait_for_file(jobpid, 30, [holder])
        job = int(open(jobpid).read())
        for _ in range(args.n):
            contenders.append(spawn(elect_cmd(args, "herd", "--wait",
                                              job=f"date +%s%N >> {starts}; exec sleep {args.job}")))
        # Settle: until the contenders together use less than 10% of a core, for 1 s (at most 60 s).
        time.sleep(1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t0 = sum(cpu_ns(p.pid) for p in contenders)
            time.sleep(1)
            if (sum(cpu_ns(p.pid) for p in contenders) - t0) / 1e9 < 0.1:
                break
        exited = [p.returncode for p in contenders if p.poll() is not None]
        if exited:
            raise RuntimeError(f"{len(exited)} of {args.n} contenders exited while waiting (codes {sorted(set(exited))})")
        # Where the server can tell (Redis: clients blocked in BLPOP), until every waiter waits:
        # a window that starts earlier counts the last ones' start-up (at most 60 s more).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            waiting = server.waiting()
            if waiting is None or waiting >= args.n:
                break
            if time.monotonic() >= deadline - 0.5:
                raise RuntimeError(f"only {waiting} of {args.n} contenders were waiting after 60 s more")
            time.sleep(0.5)
        if os.path.exists(starts):
            raise RuntimeError("a contender's job started while the holder still held the lease")

        # Idle cost of the waiting contenders over the window.
        r0, s0 = server.requests(), server.cpu_ns()
        c0 = sum(cpu_ns(p.pid) for p in contenders)
        t0 = time.monotonic()
        if args.period:
            # The window's first second, which one period on (the window is whole periods) is
            # the second after the release: the baseline of the release's own requests.
            time.sleep(1.0)
            r_first, first_span = server.requests(), time.monotonic() - t0
            time.sleep(args.window - first_span)
        else:
            time.sleep(args.window)
        r1, s1 = server.requests(), server.cpu_ns()
        c1 = sum(cpu_ns(p.pid) for p in contenders)
        span = time.monotonic() - t0
        own = server.own_cost() * (2 if args.period else 1)
        idle_rate = None if r0 is None else (r1 - r0 - own) / span
        contender_cpu = (c1 - c0) / 1e6 / span
        server_cpu = None if s0 is None else (s1 - s0) / 1e6 / span

        # One release: the holder's job exits; count the jobs that start within 1 s.
        q0 = server.requests()
        released = time.time_ns()
        os.kill(job, signal.SIGTERM)
        t0 = time.monotonic()
        time.sleep(1.0)
        q1 = server.requests()
        span = time.monotonic() - t0
        time.sleep(0.3)  # stamps of jobs started just before the 1 s mark
        stamps = []
        if os.path.exists(starts):
            with open(starts) as f:
                stamps = sorted(int(x) for x in f.read().split())
        woke = [s for s in stamps if released <= s <= released + 1_000_000_000]
        first = f"{fmt_ms(woke[0] - released)}" if woke else "none"
        if q0 is None:
            burst = None
        elif args.period:
            # Waiters that re-check every period do so in the same second of each period: the
            # second after the release sees those of the window's first second again.
            burst = (q1 - q0 - server.own_cost()) - (r_first - r0 - server.own_cost()) * span / first_span
        else:
            burst = (q1 - q0 - server.own_cost()) - idle_rate * span
    finally:
        stop(contenders + [holder], timeout=20)
        subprocess.run(["rm", "-rf", d])

    def num(v, f="{:.0f}"):
        return "n/a" if v is None else f.format(v)

    ok = "met" if len(woke) == 1 else "**missed**"
    print(f"| {args.label} | {args.n} | {num(idle_rate, '{:.1f}')} | {num(server_cpu)} | {contender_cpu:.0f} "
          f"| {len(woke)} ({ok}) | {num(burst)} | {first} |")


# ------------------------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("wall")
    p.add_argument("json", nargs="+")
    p.add_argument("--target", action="append", default=[], help="NAME=RATIO: the first row ÷ NAME should not exceed RATIO")

    def common(p):
        p.add_argument("--elect", required=True)
        p.add_argument("--label", required=True)
        p.add_argument("--backend", default="", help="backend URL; empty for the default file backend")

    p = sub.add_parser("handover")
    common(p)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--hold", type=float, default=0.4, help="seconds the holder's job runs after acquiring")
    p.add_argument("--target", type=float, default=50, help="ms")

    p = sub.add_parser("takeover")
    common(p)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ttl", default="2s")
    p.add_argument("--grace", default="500ms")
    p.add_argument("--settle", type=float, default=0.5, help="seconds for the contender to start waiting")
    p.add_argument("--what", choices=["elect", "host"], default="elect", help="what dies (see lose)")
    p.add_argument("--target", type=float, default=2500, help="ms")

    p = sub.add_parser("memory")
    p.add_argument("--elect", required=True)
    p.add_argument("--sleep", type=int, default=5)
    p.add_argument("backends", nargs="+", help="LABEL=URL, URL - for the default file backend")

    p = sub.add_parser("contention")
    common(p)
    p.add_argument("--kind", choices=["file", "redis", "etcd", "postgres", "zk"], required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--window", type=float, default=5)
    p.add_argument("--job", type=float, default=3, help="seconds each contender's job holds the lease")
    p.add_argument("--period", type=float, help="seconds between an idle waiter's requests, when they are "
                   "periodic (the window must be whole periods): the release's second is compared with "
                   "the window's first second rather than with the window's mean")
    p.add_argument("--port", type=int)
    p.add_argument("--server-pid", type=int)
    p.add_argument("--pg-user", default="bench")
    p.add_argument("--pg-db", default="bench")

    args = ap.parse_args()
    globals()["cmd_" + args.cmd](args)


if __name__ == "__main__":
    main()
