"""The spawner helper's own side: the process, running as the user, that starts commands.

`spawner` is the agent's end (on asyncio) and says why the helper exists. Both ends of their
small protocol change together; this side uses only the standard library's threads and
`subprocess`, and the first helper is forked from the agent before its event loop exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from typing import Any

from .identity import Identity

SPAWNER_FLAG = "--spawner"
MAX_MESSAGE = 4 * 1024 * 1024
UNKNOWN_EXIT = 255


HELPER_NAME = "insien-spawner"
"""The helper's process name (`comm`), as `ps` and `pgrep -x` show it."""


def _name_helper() -> None:
    """Call while still allowed: once its ids change, a process's /proc entries are root's."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(HELPER_NAME)


def helper_main(fd: int) -> None:
    """Spawn what the agent asks, report pids and exits; ends when the agent closes the socket."""
    _name_helper()
    sock = socket.socket(fileno=fd)
    children: dict[int, subprocess.Popen[bytes]] = {}
    state = threading.Condition()
    send_lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with send_lock:
            sock.send(json.dumps(message).encode())

    def reap() -> None:
        while True:
            with state:
                while not children:
                    state.wait()
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                continue
            with state:  # a spawn registers its child while holding this
                child = children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if child is not None:
                child.returncode = code  # so that it never tries to reap itself
            send({"exit": pid, "code": code})

    threading.Thread(target=reap, daemon=True).start()
    while True:
        data, fds, _flags, _address = socket.recv_fds(sock, MAX_MESSAGE, 3)
        if not data:
            os._exit(0)
        try:
            request = json.loads(data)
            with state:
                child = subprocess.Popen(
                    [request["cmd"], *request["args"]],
                    stdin=fds[0],
                    stdout=fds[1],
                    stderr=fds[2],
                    cwd=request["cwd"],
                    env=request["env"],
                    start_new_session=True,
                )
                children[child.pid] = child
                state.notify()
                # Still holding `state`: the reaper cannot report this child's exit before
                # the agent has heard its pid.
                send({"n": request["n"], "pid": child.pid})
        except OSError as exc:
            send({"n": request.get("n"), "errno": exc.errno, "message": exc.strerror or str(exc)})
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            send({"n": None, "errno": 0, "message": f"bad spawn request: {exc}"})
        finally:
            for received in fds:
                os.close(received)


# -- the agent's side ---------------------------------------------------------------------------


class ForkedHelper:
    """The first helper, forked from the agent before its event loop or any thread existed:
    no interpreter to start (a fresh one costs the first command about 70 ms) and its memory
    shared with the agent's until either writes to it. Later helpers are started afresh."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = UNKNOWN_EXIT
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def fork_helper(identity: Identity) -> ForkedHelper | None:
    """Fork the helper now, as the user; call it before any thread or event loop exists.

    None when the agent runs commands as itself (no helper is needed then)."""
    if not identity.switches or identity.uid is None or identity.gid is None:
        return None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the helper: nothing of the agent's stdio or privileges may stay with it
        try:
            ours.close()
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            keep = theirs.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 65536)
            _name_helper()
            os.setgroups([])
            os.setgid(identity.gid)
            os.setuid(identity.uid)
            helper_main(keep)
        finally:
            os._exit(UNKNOWN_EXIT)
    theirs.close()
    return ForkedHelper(pid, ours)
