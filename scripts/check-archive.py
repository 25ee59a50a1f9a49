#!/usr/bin/env python3
"""An independent check of issue 13 (the durable archive), run from outside
with the server and archiver binaries only: its own redis-server and
PostgreSQL (initdb in a temporary directory, postgres on a free loopback
port; not the repository's launcher), its own WebSocket client (standard
library only), and psql for the SQL.

What it checks (the issue's "How it is checked"):
  - 2 servers with --history 100 --database-url, one archiver;
  - 3,000 messages into one room; once the archiver's lag is 0,
    count(*) and count(DISTINCT "offset") are both 3,000;
  - a client joining with since = just before the first offset on the other
    server receives all 3,000, in order, once, with no gap;
  - PostgreSQL is killed with kill -9 while 1,000 more are sent, and
    restarted: the table ends with 4,000 distinct rows and no duplicates;
  - GET /history pages back through all 4,000, once each.

Usage: scripts/check-archive.py [BIN_DIR]   (default target/release if it
holds both binaries, else target/debug)
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import chatcheck
from chatcheck import Ws, free_port, http_get, wait_port, check

ROOM = "archived-room"



def pg_bin():
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    sys.exit("PostgreSQL is missing: run scripts/install-deps.sh (package postgresql)")


class Postgres:
    """initdb in a temporary directory and postgres on a free loopback port,
    run as the `postgres` user when this is root (initdb refuses root)."""

    def __init__(self, tmp):
        self.bin = pg_bin()
        self.dir = os.path.join(tmp, "pg")
        self.port = free_port()
        self.log = os.path.join(tmp, "pg.log")
        os.makedirs(self.dir)
        self.as_user = []
        if os.geteuid() == 0:
            shutil.chown(tmp, "postgres")
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run(self.as_user + [f"{self.bin}/initdb", "-D", self.dir, "-U", "postgres",
                                       "-A", "trust", "--no-sync"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.proc = None
        self.start()

    def start(self):
        log = open(self.log, "a")
        self.proc = subprocess.Popen(
            self.as_user + [f"{self.bin}/postgres", "-D", self.dir, "-p", str(self.port),
                            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                            "-c", "fsync=off"],
            stdout=log, stderr=log)
        assert wait_port(self.port, 30), f"postgres did not start (see {self.log})"

    def postmaster_pid(self):
        with open(os.path.join(self.dir, "postmaster.pid")) as f:
            return int(f.readline())

    def kill9(self):
        pid = self.postmaster_pid()
        os.kill(pid, 9)
        self.proc.wait()
        # The backends die with the postmaster; wait for the port to close.
        end = time.time() + 10
        while time.time() < end and wait_port(self.port, 0.05):
            time.sleep(0.05)

    def psql(self, sql, db="chat"):
        out = subprocess.run(
            [f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db,
             "-At", "-c", sql], check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        try:
            os.kill(self.postmaster_pid(), 9)
        except (OSError, ValueError):
            pass
        if self.proc:
            self.proc.kill()
            self.proc.wait()

    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/chat"


def metric(port, name):
    code, body = http_get(port, "/metrics")
    if code != 200:
        return None
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_lag_zero(mport, pg, want, t=90):
    """Until the archiver reports lag 0 and the table holds `want` rows."""
    end = time.time() + t
    lag = rows = None
    while time.time() < end:
        lag = metric(mport, "archiver_lag_messages")
        try:
            rows = int(pg.psql(f"SELECT count(*) FROM messages WHERE room = '{ROOM}'"))
        except subprocess.CalledProcessError:
            rows = None
        if lag == 0 and rows == want:
            return True
        time.sleep(0.2)
    print(f"        lag {lag}, rows {rows} after {t} s")
    return False


def send(ws, n, tag):
    """Send n messages, 100 at a time, each window's echoes read before the
    next: the echoes, in order."""
    out = []
    i = 0
    while i < n:
        w = min(100, n - i)
        for k in range(i, i + w):
            ws.send({"type": "send", "text": f"{tag}{k}", "id": f"{tag}-{k}"})
        got = 0
        while got < w:
            f = ws.next(10)
            if f is None:
                return out
            if f.get("type") == "message":
                out.append(f)
                got += 1
        i += w
    return out


def main():
    bins = sys.argv[1] if len(sys.argv) > 1 else None
    if bins is None:
        bins = "target/release"
        if not all(os.path.exists(f"{bins}/{b}") for b in ("server", "archiver")):
            bins = "target/debug"
    server, archiver = f"{bins}/server", f"{bins}/archiver"
    for b in (server, archiver):
        if not os.path.exists(b):
            sys.exit(f"no {b}: cargo build -p chat-server -p chat-archiver, or pass the directory")
    if not shutil.which("redis-server"):
        sys.exit("redis-server is missing: run scripts/install-deps.sh")
    tmp = tempfile.mkdtemp(prefix="check-archive-")
    procs = []
    pg = None
    try:
        pg = Postgres(tmp)
        pg.psql("CREATE DATABASE chat", db="postgres")
        rport = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_port(rport), "redis did not start"
        redis_url = f"redis://127.0.0.1:{rport}/"
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            log = open(os.path.join(tmp, f"app{i + 1}.log"), "w")
            procs.append(subprocess.Popen(
                [server, "--app-id", f"app{i + 1}", "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url,
                 "--history", "100", "--database-url", pg.url(), "--rate", "100000", "--burst", "100000"],
                stdout=log, stderr=log))
            assert wait_port(port), f"server app{i + 1} did not start (see {tmp})"
        mport = free_port()
        log = open(os.path.join(tmp, "archiver.log"), "w")
        procs.append(subprocess.Popen(
            [archiver, "--redis-url", redis_url, "--database-url", pg.url(),
             "--metrics-listen", f"127.0.0.1:{mport}"], stdout=log, stderr=log))
        assert wait_port(mport, 30), f"archiver did not start (see {tmp}/archiver.log)"
        run_checks(pg, ports, mport)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if pg:
            pg.stop()
        if not chatcheck.FAILS:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}")
    sys.exit(chatcheck.summary())


def run_checks(pg, ports, mport):
    print("3,000 messages into one room, --history 100:")
    a = Ws(ports[0], f"?room={ROOM}&nick=ann")
    check(a.status == 101 and a.until("members") is not None, "a sender joins app1")
    sent = send(a, 3000, "m")
    check(len(sent) == 3000, f"3,000 messages accepted ({len(sent)})")
    check(wait_lag_zero(mport, pg, 3000), "the archiver's lag reaches 0 with 3,000 rows")
    counts = pg.psql(f"""SELECT count(*), count(DISTINCT "offset") FROM messages WHERE room = '{ROOM}'""")
    check(counts == "3000|3000", f"count(*), count(DISTINCT offset) = 3000, 3000 ({counts})")

    print("a resume from the first offset on app2:")
    first = sent[0]["offset"]
    b = Ws(ports[1], f"?room={ROOM}&nick=bob&since={first - 1}")
    check(b.status == 101, "bob connects to app2")
    got, gaps = [], []
    end = time.time() + 30
    while len(got) < 3000 and time.time() < end:
        f = b.next(5)
        if f is None:
            break
        if f.get("type") == "message":
            got.append(f)
        elif f.get("type") == "gap":
            gaps.append(f)
    check(not gaps, f"no gap ({gaps[:2]})")
    check([m["offset"] for m in got] == [m["offset"] for m in sent],
          f"all 3,000, in order, once ({len(got)} came)")
    check(got == sent, "each exactly as sent live")
    extra = [f for f in b.drain(0.5) if f.get("type") == "message"]
    check(not extra, f"nothing more ({len(extra)})")
    b.close()

    print("PostgreSQL killed with kill -9 while 1,000 more are sent, then restarted:")
    pg.kill9()
    more = send(a, 1000, "k")
    check(len(more) == 1000, f"1,000 more accepted while PostgreSQL is down ({len(more)})")
    time.sleep(1)
    pg.start()
    check(wait_lag_zero(mport, pg, 4000), "the archiver catches up: lag 0 with 4,000 rows")
    counts = pg.psql(f"""SELECT count(*), count(DISTINCT "offset") FROM messages WHERE room = '{ROOM}'""")
    check(counts == "4000|4000", f"4,000 distinct rows, no duplicates ({counts})")
    dup = pg.psql(f"""SELECT count(*) FROM (SELECT epoch, "offset" FROM messages WHERE room = '{ROOM}'
                      GROUP BY epoch, "offset" HAVING count(*) > 1) d""")
    check(dup == "0", f"no (epoch, offset) twice ({dup})")

    print("GET /history pages back through all of it:")
    offsets, before, pages = [], None, 0
    for _ in range(20):
        q = {"room": ROOM, "limit": 500}
        if before is not None:
            q["before"] = before
        code, body = http_get(ports[1], "/history?" + urllib.parse.urlencode(q))
        if code != 200:
            check(False, f"GET /history answers 200 ({code} {body.strip()})")
            break
        page = json.loads(body)
        pages += 1
        offs = [m["offset"] for m in page["messages"]]
        offsets = offs + offsets
        if not page["more"] or not offs:
            break
        before = offs[0]
    want = [m["offset"] for m in sent + more]
    check(offsets == want, f"4,000 messages once, in order, in {pages} pages ({len(offsets)})")
    code, body = http_get(ports[1], f"/history?room={ROOM}&limit=0")
    check(code == 400, f"limit=0 is refused with 400 ({code} {body.strip()})")
    a.close()


if __name__ == "__main__":
    main()
