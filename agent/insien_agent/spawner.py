"""Starting commands as the sandbox user at vfork speed.

CPython cannot vfork when the child must change its uid, so every command would fork the whole
agent (about 1.5 ms more per command). Instead the agent starts this helper once, as the user;
it needs no id change, so its spawns vfork. The agent creates each command's pipes itself and
hands them over a Unix socket (SCM_RIGHTS); the helper answers with the pid, and later with
the exit status, since the command is its child.

The helper runs as the user, so user code can kill or trace it. It can then lie only about
the user's own commands: the agent believes a pid only if the process belongs to the user and
is the helper's child, acts on exits only for pids it knows, and starts a new helper when the
old one dies. Terminals still go the slow way (their child must take a controlling terminal).

The helper's own side (what runs as the user, and forking the first helper) is in `helper`.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
from typing import Any

from . import untrusted_json
from .errors import BAD_REQUEST, AgentError
from .helper import MAX_MESSAGE, SPAWNER_FLAG, UNKNOWN_EXIT, ForkedHelper
from .identity import Identity
from .selfexec import own_interpreter
from .wire import widen_pipe

log = logging.getLogger("insien_agent.spawner")

MAX_EARLY_EXITS = 64
SPAWN_SECONDS = 5.0
"""How long the helper may take to answer a spawn before it is taken for stuck."""


ZOMBIE_CHECK_SECONDS = 1.0


def zombie_exit_code(pid: int) -> int | None:
    """The exit code of a process that exited and was not reaped yet (from /proc/<pid>/stat,
    whose last field is the wait status); None if it still runs or is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2 :].split()
    if not fields or fields[0] != b"Z" or len(fields) < 50:
        return None
    return os.waitstatus_to_exitcode(int(fields[-1]))


def refuse_nul(**fields: str | list[str] | dict[str, str]) -> None:
    """BAD_REQUEST for a NUL byte in what would become a process's argv, working folder or
    environment (strings, lists of them, or name-value maps). No process can be given one,
    and the helper, which answers only spawns it can start, would be taken for stuck:
    checked before anything is spawned."""
    for name, value in fields.items():
        if isinstance(value, str):
            texts: list[str] = [value]
        elif isinstance(value, dict):
            texts = [text for pair in value.items() for text in pair]
        else:
            texts = value
        if any("\x00" in text for text in texts):
            raise AgentError(BAD_REQUEST, f"field {name!r} must not contain a NUL byte")


class HelperUnresponsive(Exception):
    """The spawner helper did not answer; it has been replaced."""


"""The exit code of a command whose helper died before reporting it."""


# -- the helper process (runs as the user) ------------------------------------------------------


class SpawnedProcess:
    """What ManagedProcess needs of a process: pid, pipes as asyncio streams, and its exit."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        exited: asyncio.Future[int],
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._exited = exited
        self.returncode: int | None = None

    async def wait(self) -> int:
        """The exit code, as the helper reports it, or as the kernel shows a zombie that the
        helper does not reap (stopped or traced by user code): timeouts and exits must not
        depend on the helper.

        Only a zombie still there a whole check later counts: one seen at the instant it
        exited is reaped by the helper a moment after, with its real status. The kernel hides
        a zombie's status from a reader without ptrace rights over it (the agent has none over
        the user), so what /proc shows is a last resort, never a race winner."""
        zombie_seen = False
        while not self._exited.done():
            await asyncio.wait({self._exited}, timeout=ZOMBIE_CHECK_SECONDS)
            if self._exited.done():
                break
            code = zombie_exit_code(self.pid)
            if code is not None and zombie_seen:
                self._exited.set_result(code)
            zombie_seen = code is not None
        self.returncode = self._exited.result()
        return self.returncode


class Spawner:
    """The agent's end of the helper: one spawn at a time, exits routed to their processes."""

    def __init__(self, identity: Identity, entry: str, forked: ForkedHelper | None = None) -> None:
        self._identity = identity
        self._entry = entry
        self._forked = forked
        self._lock = asyncio.Lock()
        self._sock: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | ForkedHelper | None = None
        self._reply: asyncio.Future[dict[str, Any]] | None = None
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._early_exits: dict[int, int] = {}
        self._serial = 0

    def prestart(self) -> None:
        """Start the helper now, so its interpreter starts up while the agent says hello."""
        if self._sock is None:
            self._start_helper()

    def _start_helper(self) -> None:
        if self._forked is not None:
            forked, self._forked = self._forked, None
            if forked.poll() is None:
                self._adopt(forked, forked.sock)
                return
            forked.sock.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._helper = subprocess.Popen(
            [*own_interpreter(), "-I", "-S", self._entry, SPAWNER_FLAG, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **self._identity.spawn_options(),
        )
        theirs.close()
        self._adopt(self._helper, ours)

    def _adopt(self, helper: subprocess.Popen[bytes] | ForkedHelper, sock: socket.socket) -> None:
        self._helper = helper
        sock.setblocking(False)
        self._sock = sock
        self._reader = asyncio.get_running_loop().create_task(self._read(sock))

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(sock, MAX_MESSAGE):
                try:
                    # The helper runs as the user, so user code can write here (ptrace).
                    message = untrusted_json.loads(data, max_bytes=MAX_MESSAGE)
                except untrusted_json.JsonRefused:
                    continue
                if not isinstance(message, dict):
                    continue
                if "exit" in message:
                    pid, code = message["exit"], message.get("code")
                    if not isinstance(pid, int) or not isinstance(code, int):
                        continue
                    future = self._exits.get(pid)
                    if future is None:
                        # Before its pid (a misbehaving helper): keep it, a few at most.
                        self._early_exits[pid] = code
                        while len(self._early_exits) > MAX_EARLY_EXITS:
                            self._early_exits.pop(next(iter(self._early_exits)))
                    elif not future.done():
                        future.set_result(code)
                elif message.get("n") == self._serial and self._reply and not self._reply.done():
                    self._reply.set_result(message)
                elif self._believable(message.get("pid")) and isinstance(message["pid"], int):
                    # The answer to a spawn whose request was cancelled meanwhile: nobody
                    # follows that command, so it must not run.
                    with contextlib.suppress(OSError):
                        os.killpg(message["pid"], signal.SIGKILL)
        except OSError:
            pass
        # The helper is gone (killed by user code, or it crashed): forget it, and learn about
        # its children's ends by watching /proc instead.
        log.warning("the spawner helper went away; starting a new one on the next command")
        if self._sock is sock:
            self._sock = None
        sock.close()
        if isinstance(self._helper, ForkedHelper):  # the agent's own child: reap it
            forked = self._helper
            for _ in range(50):
                if forked.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(OSError("the spawner helper went away"))
        for pid, future in self._exits.items():
            if not future.done():
                watcher = loop.create_task(_watch_exit(pid, future))
                self._watchers.add(watcher)
                watcher.add_done_callback(self._watchers.discard)

    async def spawn(
        self, cmd: str, args: list[str], *, cwd: str, env: dict[str, str], stdin: bool
    ) -> SpawnedProcess:
        refuse_nul(cmd=cmd, args=args, cwd=cwd, env=env)
        loop = asyncio.get_running_loop()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        if stdin:
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), -1
        give = [in_r, out_w, err_w]
        keep = [fd for fd in (in_w, out_r, err_r) if fd >= 0]
        try:
            for fd in (out_r, err_r):
                widen_pipe(fd)
            async with self._lock:
                reply = await self._ask(cmd, args, cwd, env, give)
            for fd in give:
                os.close(fd)
            give = []
            if "pid" not in reply:
                raise OSError(reply.get("errno") or 0, reply.get("message", "spawn failed"))
            pid = reply["pid"]
            doubt = self._doubt(pid)
            if doubt is not None:
                log.warning("refusing a spawn: %s", doubt)
                raise OSError(0, f"the spawner reported a pid that is not its user's: {doubt}")
            exited = self._exits.setdefault(pid, loop.create_future())
            exited.add_done_callback(lambda _: self._exits.pop(pid, None))
            if pid in self._early_exits:
                exited.set_result(self._early_exits.pop(pid))
            keep = []  # from here the transports own the agent's ends
            stdout = await _reader_for(out_r)
            stderr = await _reader_for(err_r)
            writer = await _writer_for(in_w) if stdin else None
            return SpawnedProcess(pid, writer, stdout, stderr, exited)
        finally:
            for fd in give + keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _ask(
        self, cmd: str, args: list[str], cwd: str, env: dict[str, str], give: list[int]
    ) -> dict[str, Any]:
        """Send one spawn to the helper and wait for its answer (called under the lock). A
        helper that dies meanwhile (killed by user code, or replaced) gets one more try with
        a new one; one that does not answer is replaced and the spawn fails clearly."""
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            if self._sock is None:
                self._start_helper()
            assert self._sock is not None
            self._reply = loop.create_future()
            self._serial += 1
            request = json.dumps(
                {"n": self._serial, "cmd": cmd, "args": args, "cwd": cwd, "env": env}
            )
            try:
                self._sock.sendmsg(
                    [request.encode()],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", give))],
                )
                return await asyncio.wait_for(asyncio.shield(self._reply), SPAWN_SECONDS)
            except TimeoutError:
                self._reply.cancel()
                # Stopped or traced by user code: it will never answer. Timeouts must not
                # depend on it, so it is replaced, and this command fails clearly.
                self.replace_helper(f"no answer to a spawn within {SPAWN_SECONDS:g}s")
                raise HelperUnresponsive(
                    f"the helper that starts commands did not answer within "
                    f"{SPAWN_SECONDS:g}s (stopped or traced by user code?); it was "
                    "replaced: run the command again"
                ) from None
            except OSError:
                if attempt:
                    raise
                await self._helper_gone()
        raise AssertionError("unreachable")

    async def _helper_gone(self) -> None:
        """Wait until the reader has forgotten a helper that went away."""
        for _ in range(200):
            if self._sock is None:
                return
            await asyncio.sleep(0.01)
        self._sock = None  # the reader never noticed: start afresh regardless

    def replace_helper(self, why: str) -> None:
        """Kill the helper (SIGKILL reaches a stopped or traced one too); its reader then
        forgets it, and the next command starts a new one. Its children are re-parented to
        the container's init, which reaps them; their ends are then seen through /proc."""
        helper = self._helper
        if helper is None or helper.poll() is not None:
            return
        log.warning("replacing the spawner helper: %s", why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper.pid, signal.SIGKILL)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def _believable(self, pid: object) -> bool:
        """The pid is the helper's child and runs as the user (it may have exited already)."""
        return self._doubt(pid) is None

    def _doubt(self, pid: object) -> str | None:
        """Why a pid the helper reported is not believed (None if it is), with what /proc
        said: a refusal seen once under load is to be understood from its log line."""
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            return f"not a process id: {pid!r}"
        helper = self._helper.pid if self._helper is not None else None
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            return None  # gone already: nothing to signal, its exit still arrives
        parent = fields.get("PPid", "").strip()
        uids = fields.get("Uid", "").split()
        users = all(uid == str(self._identity.uid) for uid in uids)
        if parent == str(helper) and users:
            return None
        state = fields.get("State", "").strip()
        if users and state.startswith("X"):
            # Being reaped this instant, when /proc already says parent 0 (a command that
            # ended at once, seen first in a pod where the agent is PID 1): its exit arrives.
            return None
        return (
            f"pid {pid}: parent {parent} (helper {helper}), uids {uids} (user"
            f" {self._identity.uid}), state {state!r}"
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.cancel()


async def _watch_exit(pid: int, future: asyncio.Future[int]) -> None:
    # Nothing signals the end of a process that is not our child: poll /proc (cheap, rare).
    while os.path.exists(f"/proc/{pid}") and not future.done():  # noqa: ASYNC240, ASYNC110
        await asyncio.sleep(0.2)
    if not future.done():
        future.set_result(UNKNOWN_EXIT)


async def _reader_for(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024 * 1024)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0)
    )
    return reader


async def _writer_for(fd: int) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", 0)
    )
    return asyncio.StreamWriter(transport, protocol, None, loop)
