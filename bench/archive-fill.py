#!/usr/bin/env python3
"""Write a RESP stream for `redis-cli --pipe` that fills ROOMS rooms with
PER_ROOM message entries each, as the chat server stores them: the epoch
hash `chat:{room}:epoch` (epoch, inc, start) and the log
`chat:{room}:log` with entries `<offset>-0`, field `f` = the message frame
(64-byte text, a client id). Usage: archive-fill.py PREFIX ROOMS PER_ROOM"""
import sys
import time

prefix, rooms, per_room = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout.buffer


def cmd(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    out.write(b"".join(parts))


now_ms = int(time.time() * 1000)
text = "x" * 64
for r in range(rooms):
    room = f"{prefix}{r}"
    epoch = f"{now_ms + r:012x}"[-12:]
    start = (now_ms + r) * 1000
    cmd("HSET", f"chat:{{{room}}}:epoch", "epoch", epoch, "inc", "bench", "start", start)
    for i in range(1, per_room + 1):
        off = start + i
        frame = (
            f'{{"type":"message","offset":{off},"epoch":"{epoch}","room":"{room}",'
            f'"nick":"lg{r}","text":"{text}","app_id":"bench1","ts":{now_ms},'
            f'"id":"lg{r}-{i}"}}'
        )
        cmd("XADD", f"chat:{{{room}}}:log", f"{off}-0", "f", frame)
