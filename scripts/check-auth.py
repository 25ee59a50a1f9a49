#!/usr/bin/env python3
"""An independent check of issue 10 ("who gets in"), with nothing from this
repository but the server binary: tokens are minted here with HMAC-SHA256,
and the WebSocket client is written here on raw sockets (standard library
only).

It starts redis-server and two servers on loopback, one with --auth required
and one with --auth optional, both with --jwt-secret and --allowed-origins
http://good.example, and checks every rule it can see from outside. Exit
status 0 when every check passed; each failure is printed.

Usage: scripts/check-auth.py [path/to/server]   (default target/release/server,
else target/debug/server)
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

import chatcheck
from chatcheck import Ws, free_port, http_get, wait_port, check

SECRET = "check-secret"
PREVIOUS = "check-previous"
ORIGIN = "http://good.example"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, alg="HS256"):
    head = b64u(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64u(json.dumps(claims).encode())
    if alg == "none":
        return f"{head}.{body}."
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64u(sig)}"


def token(sub, ttl=600, **extra):
    c = {"sub": sub, "exp": int(time.time()) + ttl}
    c.update(extra)
    return jwt(c)


def main():
    server = sys.argv[1] if len(sys.argv) > 1 else None
    if server is None:
        for cand in ("target/release/server", "target/debug/server"):
            if os.path.exists(cand):
                server = cand
                break
    if not server or not os.path.exists(server):
        sys.exit("no server binary: cargo build -p chat-server, or pass its path")
    if not shutil.which("redis-server"):
        sys.exit("redis-server is missing: run scripts/install-deps.sh")
    tmp = tempfile.mkdtemp()
    procs = []
    try:
        rport = free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_port(rport), "redis did not start"
        req, opt, admin = free_port(), free_port(), free_port()
        common = ["--redis-url", f"redis://127.0.0.1:{rport}", "--jwt-secret", SECRET,
                  "--jwt-previous-secret", PREVIOUS, "--allowed-origins", ORIGIN]
        for app, port, mode, extra in (("req", req, "required", ["--admin-listen", f"127.0.0.1:{admin}"]),
                                       ("opt", opt, "optional", [])):
            log = open(os.path.join(tmp, f"{app}.log"), "w")
            procs.append(subprocess.Popen(
                [server, "--app-id", app, "--listen", f"127.0.0.1:{port}", "--auth", mode] + common + extra,
                stdout=log, stderr=log))
            assert wait_port(port), f"server {app} did not start (see {tmp}/{app}.log)"
        run_checks(req, opt, admin)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(chatcheck.summary())


def run_checks(req, opt, admin):
    now = int(time.time())
    print("refusals at the upgrade (--auth required):")
    cases = [
        ("no token", "?room=a", "", "token required"),
        ("garbage", "?token=garbage", "", "malformed"),
        ("wrong signature", "?token=" + jwt({"sub": "ann", "exp": now + 600}, secret="wrong"), "", "signature"),
        ("alg none", "?token=" + jwt({"sub": "ann", "exp": now + 600}, alg="none"), "", "none"),
        ("alg HS512 header", "?token=" + jwt({"sub": "ann", "exp": now + 600}, alg="HS512"), "", ""),
        ("expired", "?token=" + jwt({"sub": "ann", "exp": now - 5}), "", "expired"),
        ("no sub", "?token=" + jwt({"exp": now + 600}), "", "sub"),
        ("no exp", "?token=" + jwt({"sub": "ann"}), "", "exp"),
        ("bad sub", "?token=" + jwt({"sub": "a b!", "exp": now + 600}), "", "sub"),
        ("garbage bearer", "", "Authorization: Bearer nonsense\r\n", "malformed"),
    ]
    for what, q, h, why in cases:
        w = Ws(req, q, h)
        check(w.status == 401 and why.lower() in w.body.lower(),
              f"{what} -> 401 saying {why!r} (got {w.status} {w.body.strip()[:80]!r})")
    w = Ws(opt, "?token=garbage")
    check(w.status == 401, f"optional: a bad token -> 401 (got {w.status})")
    w = Ws(opt, "?room=a&nick=anon1")
    check(w.status == 101, f"optional: no token -> 101 anonymous (got {w.status})")
    w.close()
    w = Ws(req, "", "Authorization: Bearer " + token("hdr") + "\r\n")
    check(w.status == 101, f"Authorization: Bearer works (got {w.status})")
    w.close()
    w = Ws(req, "?token=" + jwt({"sub": "rot", "exp": now + 600}, secret=PREVIOUS))
    check(w.status == 101, f"a token signed with --jwt-previous-secret -> 101 (got {w.status})")
    w.close()

    print("origin:")
    for port, name in ((req, "required"), (opt, "optional")):
        q = "?token=" + token("org")
        w = Ws(port, q, "Origin: http://evil.example\r\n")
        check(w.status == 403 and "evil.example" in w.body, f"{name}: evil Origin -> 403 naming it (got {w.status})")
        w = Ws(port, q, f"Origin: {ORIGIN}\r\n")
        check(w.status == 101, f"{name}: good Origin -> 101 (got {w.status})")
        w.close()

    print("identity:")
    ann = Ws(req, "?room=team&nick=zed&token=" + token("ann", name="Ann"))
    wel = ann.next()
    check(wel and wel.get("nick") == "Ann", f"the nick is the token's name, ?nick ignored ({wel and wel.get('nick')})")
    ann.until("joined")
    mem = ann.until("members")
    check(mem and any(m.get("sub") == "ann" and m.get("nick") == "Ann" for m in mem.get("members", [])),
          "members carry sub")
    ann.send({"type": "nick", "nick": "zed"})
    e = ann.until("error")
    check(e and e.get("code") == "forbidden", f"a nick frame with a token -> forbidden ({e})")
    # An anonymous client on the other instance cannot take Ann's nick.
    anon = Ws(opt, "?room=team&nick=Ann")
    anon.next()
    e = anon.next()
    check(e and e.get("code") == "nick_taken", f"anonymous taking an authenticated nick -> nick_taken ({e})")
    anon.close()
    # Nor a nick a live anonymous member holds.
    a1 = Ws(opt, "?room=team&nick=carol")
    a1.until("members")
    a2 = Ws(opt, "?room=team&nick=carol")
    a2.next()
    e = a2.next()
    check(e and e.get("code") == "nick_taken", f"anonymous taking a live anonymous nick -> nick_taken ({e})")
    a2.close()
    bob = Ws(opt, "?room=team&nick=bob")
    bob.until("members")
    bob.send({"type": "nick", "nick": "Ann"})
    e = bob.until("error")
    check(e and e.get("code") == "nick_taken", f"an anonymous rename to an authenticated nick -> nick_taken ({e})")
    p = None
    for f in ann.drain(1.0):
        if f.get("type") == "presence" and f.get("nick") == "bob":
            p = f
    check(p is not None and "sub" not in p, "anonymous presence has no sub")

    print("private rooms:")
    insider = Ws(req, "?room=private.ops&token=" + token("ins", rooms=["private.ops"]))
    insider.until("members")
    prefix = Ws(req, "?room=private.team-x&token=" + token("pre", rooms=["private.team-*"]))
    f = prefix.until("joined")
    check(f is not None, "a prefix grant (private.team-*) joins private.team-x")
    prefix.close()
    outsider = Ws(req, "?room=lobby&token=" + token("out"))
    outsider.until("members")
    anon = Ws(opt, "?room=lobby&nick=peeker")
    anon.until("members")
    for who, w in (("a token without the grant", outsider), ("an anonymous client", anon)):
        w.send({"type": "join", "room": "private.ops", "history": 50})
        e = w.until("error")
        check(e and e.get("code") == "forbidden", f"{who} joining private.ops -> forbidden")
        w.send({"type": "who", "room": "private.ops"})
        e = w.until("error")
        check(e and e.get("code") == "forbidden", f"{who}: who private.ops -> forbidden")
    u = Ws(opt, "?room=private.ops&nick=sneak&history=50")
    frames = u.drain(1.0)
    check(not any(f.get("room") == "private.ops" and f.get("type") in ("joined", "message", "members", "presence")
                  for f in frames), "an anonymous upgrade into private.ops gets nothing of it")
    insider.send({"type": "send", "room": "private.ops", "text": "secret plans", "id": "s1"})
    insider.until("message")
    leaked = [f for w in (outsider, anon, u) for f in w.drain(1.0)
              if "secret plans" in json.dumps(f) or f.get("room") == "private.ops"]
    check(not leaked, f"refused clients never receive the private room's messages ({leaked[:2]})")

    print("direct messages:")
    dm = "dm.ann.bob"
    for sub, ok in (("ann", True), ("bob", True), ("cat", False)):
        w = Ws(req, f"?room=lobby&token=" + token(sub))
        w.until("members")
        w.send({"type": "join", "room": dm})
        f = w.next()
        while f and f.get("type") not in ("joined", "error"):
            f = w.next()
        got = f and f.get("type") == "joined"
        check(got == ok, f"{sub} joining {dm} -> {'joined' if ok else 'forbidden'} ({f})")
        w.close()
    w = Ws(req, "?room=lobby&token=" + token("bob"))
    w.until("members")
    w.send({"type": "join", "room": "dm.bob.ann"})
    e = w.until("error")
    check(e and e.get("code") == "forbidden", "dm.bob.ann (not in byte order) -> forbidden for everyone")
    w.close()
    w = Ws(opt, "?room=lobby&nick=anon5")
    w.until("members")
    w.send({"type": "join", "room": dm})
    e = w.until("error")
    check(e and e.get("code") == "forbidden", "anonymous joining a DM -> forbidden")
    w.close()

    print("expiry and refresh:")
    short = Ws(req, "?room=lobby&token=" + token("exp1", ttl=2))
    short.until("members")
    short.drain(3.5)
    check(short.closed is not None and short.closed[0] == 4003 and "token_expired" in short.closed[1],
          f"an expiring token closes with 4003 token_expired ({short.closed})")
    fresh = Ws(req, "?room=lobby&token=" + token("exp2", ttl=2))
    fresh.until("members")
    fresh.send({"type": "refresh", "token": token("exp2", ttl=600)})
    r = fresh.until("refreshed")
    check(r is not None and r.get("exp", 0) > time.time() + 500, f"refresh -> refreshed with the new exp ({r})")
    fresh.drain(3.0)
    check(fresh.closed is None, "a refreshed connection outlives its first token")
    fresh.send({"type": "refresh", "token": token("someone-else")})
    e = fresh.until("error")
    check(e and e.get("code") == "forbidden", "refresh with another sub -> forbidden")
    fresh.send({"type": "refresh", "token": "garbage"})
    e = fresh.until("error")
    check(e and e.get("code") == "unauthorized", "refresh with a bad token -> unauthorized")

    print("admin surface:")
    st, _ = http_get(req, "/metrics")
    check(st == 404, f"/metrics on the public port with --admin-listen -> 404 (got {st})")
    st, body = http_get(admin, "/metrics")
    check(st == 200 and "chat_" in body, f"/metrics on --admin-listen -> 200 (got {st})")
    st, _ = http_get(admin, "/cluster")
    check(st == 200, f"/cluster on --admin-listen -> 200 (got {st})")

    print("a bystander still chats:")
    by = Ws(opt, "?room=calm&nick=bystander")
    by.until("members")
    by.send({"type": "send", "room": "calm", "text": "still here", "id": "b1"})
    m = by.until("message")
    check(m is not None and m.get("text") == "still here", "a bystander's message is delivered")


if __name__ == "__main__":
    main()
