"""A hostile stand-in for the agent, run inside a test image: it says hello like the real one,
then answers `exec` of certain commands with bytes no agent should write.

`exec` with `cmd` naming one of HOSTILE writes that line; `ok` answers normally; `flood` writes
many well-formed lines with ids nobody issued, then answers. On `resume` it writes the nesting
bomb when /tmp/hostile-resume exists (so a restarted server meets it during recovery), and
answers normally otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

OUT = sys.stdout.buffer
HOSTILE = {
    "bomb": b"[" * 200_000 + b"\n",
    "object-bomb": b'{"id":1,"a":' + b'{"a":' * 100_000 + b"\n",
    "bad-utf8": b'{"id":1,"type":"execResponse","stdout":"\xff\xfe\xfd"}\n',
    "not-an-object": b"[1,2,3]\n",
    "not-json": b"hello, orchestrator\n",
    "nul-bytes": b"\x00" * 64 + b"\n",
    "huge-line": b'{"id":1,"x":"' + b"a" * (34 * 1024 * 1024) + b'"}\n',
    "bad-resume-fields": b'{"id":"x","type":"resumeResponse","inFlight":7}\n',
}
seq = 0


def emit(raw: bytes) -> None:
    OUT.write(raw)
    OUT.flush()


def send(message: dict[str, Any]) -> None:
    global seq
    seq += 1
    line = json.dumps(message, separators=(",", ":"))
    emit(line[:-1].encode() + b',"seq":%d}\n' % seq)


def main() -> None:
    send(
        {
            "type": "ready",
            "protocol": 1,
            "agent": "insien-agent",
            "version": "hostile",
            "pid": os.getpid(),
            "types": ["exec", "ping"],
            "uid": 1000,
        }
    )
    for line in sys.stdin.buffer:
        if not line.strip():
            continue  # blank lines are nothing (a rejoining server sends a run of them)
        message = json.loads(line)
        kind, request_id = message.get("type"), message.get("id")
        if kind == "resume":
            if os.path.exists("/tmp/hostile-resume"):
                emit(HOSTILE["bomb"])
                continue
            reply = {"id": request_id, "type": "resumeResponse", "after": message["after"]}
            emit(json.dumps({**reply, "seq": seq, "lost": 0, "notes": {}}).encode() + b"\n")
        elif kind == "ping":
            send({"id": request_id, "type": "pong"})
        elif kind == "exec":
            cmd = message.get("cmd")
            if cmd in HOSTILE:
                emit(HOSTILE[cmd])
            elif cmd == "half-line":
                emit(b'{"id":1,"type":"execRes')
                os._exit(0)
            elif cmd == "flood":
                for n in range(100_000):
                    send({"id": f"never-issued-{n}", "type": "output", "data": "x"})
                send({"id": ["not", "an", "id"], "type": "mystery"})
                send({"id": request_id, "type": "execResponse", "stdout": "after the flood\n"})
            else:
                reply = {"id": request_id, "type": "execResponse", "stdout": "ok\n", "stderr": ""}
                send({**reply, "exitCode": 0})


if __name__ == "__main__":
    main()
