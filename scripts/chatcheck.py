"""The pieces the independent checks share (standard library only): free
loopback ports, a minimal RFC 6455 client written on raw sockets, and a
plain HTTP/1.1 GET. Nothing here comes from the repository's Rust code."""

import base64
import json
import os
import socket
import struct
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Ws:
    """A minimal RFC 6455 client: text frames out (masked), frames in."""

    def __init__(self, port, query="", headers=""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n"
        )
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ")[1]) if head else 0
        self.body = rest.decode(errors="replace")
        if self.status != 101:
            # Read the rest of a refusal's body.
            try:
                self.sock.settimeout(0.5)
                while True:
                    chunk = self.sock.recv(4096)
                    if not chunk:
                        break
                    self.body += chunk.decode(errors="replace")
            except OSError:
                pass
            self.sock.close()
        self.buf = rest if self.status == 101 else b""
        self.closed = None

    def send(self, obj):
        data = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            hdr = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(hdr + mask + masked)

    def _need(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def next(self, timeout=5.0):
        """The next text frame as JSON; None on timeout or close."""
        deadline = time.time() + timeout
        try:
            while True:
                self._need(2, deadline)
                b0, b1 = self.buf[0], self.buf[1]
                n, off = b1 & 0x7F, 2
                if n == 126:
                    self._need(4, deadline)
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127:
                    self._need(10, deadline)
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                self._need(off + n, deadline)
                payload, self.buf = self.buf[off : off + n], self.buf[off + n :]
                op = b0 & 0x0F
                if op == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    self.closed = (code, payload[2:].decode(errors="replace"))
                    return None
                if op == 0x1:
                    return json.loads(payload)
        except (TimeoutError, socket.timeout, ConnectionError, OSError):
            return None

    def until(self, ty, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            f = self.next(deadline - time.time())
            if f is None:
                return None
            if f.get("type") == ty:
                return f
        return None

    def drain(self, timeout=0.5):
        out = []
        while True:
            f = self.next(timeout)
            if f is None:
                return out
            out.append(f)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def wait_port(port, t=10):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def http_get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    buf = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        buf += c
    s.close()
    return int(buf.split(b" ")[1]), buf.partition(b"\r\n\r\n")[2].decode(errors="replace")


FAILS = []
PASSES = 0


def check(ok, what):
    """Count and print one check; the failures are listed in FAILS."""
    global PASSES
    if ok:
        PASSES += 1
        print(f"  ok    {what}")
    else:
        FAILS.append(what)
        print(f"  FAIL  {what}")


def summary():
    """Print the tally; the exit status for it."""
    print(f"\n{PASSES} checks passed, {len(FAILS)} failed")
    for f in FAILS:
        print(f"  failed: {f}")
    return 1 if FAILS else 0
