"""The agent's process table: every command it runs, foreground or background, by pid.

A ManagedProcess owns its child, pumps the child's pipes (or pseudo-terminal) into an OutputLog,
and wakes its subscribers through one asyncio.Condition. Processes outlive the requests and the
clients that started them; the table keeps the most recent exited ones for `processes` and
`attach`.

Longer than most modules: a process's output pumping, its subscribers and its killing share
one condition and one log. Starting processes lives in `launch`, ending a command's process
tree in `ending`, killing every user process in `reaper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .ending import end_tree, pids_limit_hits, processes, tree
from .errors import BAD_REQUEST, NOT_FOUND, AgentError
from .identity import Identity
from .launch import PtySize, set_winsize, start_process
from .oom import oom_kills
from .output import CHUNK_SIZE, Collected, Encoder, Event, OutputLog, Subscriber
from .reaper import kill_user_processes
from .spawner import SpawnedProcess, Spawner

Emit = Callable[[Event], Awaitable[None]]

EXIT_DRAIN_SECONDS = 1.0
"""After a command exits, how long its pipes may stay open (held by something it left behind)."""
GROUP_KILL_SECONDS = 10.0
"""How long a killed command's tree is killed again while some of it remains (zombies count)."""
ESCALATE_SECONDS = 2.0
"""How long a timed-out command's tree may survive SIGKILL before every user process is."""
ENDING_WAIT_SECONDS = GROUP_KILL_SECONDS + 5.0
"""How long a new command waits for commands being ended to be gone (they fill the pids limit)."""
STORM_MEMBERS = 32
"""How many processes a command must have left behind to be taken for the fork bomb that keeps
the next command from starting."""
EXIT_REPORT_SECONDS = 3.0
"""How long, after its group is empty, a killed command's exit may go unreported before the
spawner helper (which reports it) is taken for stuck and replaced."""


@dataclass
class KillHooks:
    """What a timed-out command may ask of the agent when killing its group is not enough."""

    kill_everything: Callable[[], Awaitable[object]]
    exit_unreported: Callable[[], None]


def signal_number(value: object) -> int:
    """A signal given as a number, "TERM" or "SIGTERM"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            number = int(signal.Signals[name])
        except KeyError:
            raise AgentError(BAD_REQUEST, f"unknown signal {value!r}") from None
    else:
        raise AgentError(BAD_REQUEST, "field 'signal' must be a signal name or number")
    if number not in {int(s) for s in signal.Signals}:
        raise AgentError(BAD_REQUEST, f"unknown signal {value!r}")
    return number


class ManagedProcess:
    def __init__(
        self,
        proc: asyncio.subprocess.Process | SpawnedProcess,
        *,
        cmd: str,
        args: list[str],
        log_capacity: int,
        background: bool,
        master_fd: int | None = None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.cmd = cmd
        self.args = args
        self.background = background
        self.master_fd = master_fd
        self.log = OutputLog(log_capacity)
        self.cond = asyncio.Condition()
        self.subscribers: list[Subscriber] = []
        self.started = time.monotonic()
        self.started_at = time.time()
        self.exit_code: int | None = None
        self.signal: str | None = None
        self.duration_ms: int | None = None
        self.timed_out = False
        self.left_behind = False  # something it started still held its output at its end
        self.ending: asyncio.Task[None] | None = None
        self.hooks: KillHooks | None = None
        self.oom = False
        self._oom_kills_at_start = oom_kills()
        self._limit_hits_at_start = pids_limit_hits()
        self._exited = asyncio.Event()  # the command itself exited (its exit is known)
        # exited, its output fully pumped and, if it was killed, its whole tree gone
        self.finished = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Pump output until the process has exited and its pipes are drained (or abandoned)."""
        pumps: list[asyncio.Task[None]] = []
        if self.master_fd is not None:
            pumps.append(asyncio.create_task(self._pump_pty(self.master_fd)))
        else:
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            pumps.append(asyncio.create_task(self._pump(self.proc.stdout, "stdout")))
            pumps.append(asyncio.create_task(self._pump(self.proc.stderr, "stderr")))
        returncode = await self.proc.wait()
        self._exited.set()
        # Something the command started in the background may hold its pipes open forever.
        _done, pending = await asyncio.wait(pumps, timeout=EXIT_DRAIN_SECONDS)
        for task in pending:
            task.cancel()
        self.left_behind = bool(pending)
        await asyncio.gather(*pumps, return_exceptions=True)
        if self.ending is None and self._hit_pids_limit():
            # What it left behind filled the pids limit (a fork bomb that outlives its shell,
            # like `b(){ b|b& }; b`): ended like a timeout, or the next command cannot start.
            self.kill_group(escalate=True)
        if self.ending is not None:
            # Its end means its processes are gone: the next command must find room to start.
            await asyncio.shield(self.ending)
        if self.master_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.master_fd)
        self.duration_ms = int((time.monotonic() - self.started) * 1000)
        if returncode < 0:
            self.exit_code = 128 - returncode
            self.signal = signal.Signals(-returncode).name
        else:
            self.exit_code = returncode
        # SIGKILL, or a shell reporting that its child got one (137), while the OOM killer ran
        if self.exit_code == 128 + signal.SIGKILL and not self.timed_out:
            before, now = self._oom_kills_at_start, oom_kills()
            self.oom = before is not None and now is not None and now > before
        async with self.cond:
            self.finished.set()
            self.cond.notify_all()

    async def _pump(self, reader: asyncio.StreamReader, stream: str) -> None:
        while chunk := await reader.read(CHUNK_SIZE):
            await self._append(stream, chunk)

    async def _pump_pty(self, master_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK_SIZE)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(master_fd, "rb", 0, closefd=False),
        )
        try:
            while True:
                try:
                    chunk = await reader.read(CHUNK_SIZE)
                except OSError:  # EIO: the terminal's last user has gone
                    break
                if not chunk:
                    break
                await self._append("stdout", chunk)
        finally:
            transport.close()

    async def _append(self, stream: str, data: bytes) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self._room_for(len(data)))
            self.log.append(stream, data)
            self.cond.notify_all()

    def _room_for(self, size: int) -> bool:
        """Whether appending would not push unread bytes out from under a primary subscriber."""
        cursors = [s.cursor for s in self.subscribers if s.primary and not s.closed]
        if not cursors:
            return True
        return self.log.end + size - min(cursors) <= self.log.capacity

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def _hit_pids_limit(self) -> bool:
        before, now = self._limit_hits_at_start, pids_limit_hits()
        return before is not None and now is not None and now > before and bool(tree(self.pid))

    def kill_group(self, signum: int = signal.SIGKILL, *, escalate: bool = False) -> bool:
        """Signal the command's process group (what it left running counts, even after the
        command itself exited); False if nothing was left in it.

        A SIGKILL ends the command's whole tree (`ending`) before the command counts as
        finished. With `escalate` (a timeout, a cancel), a tree that SIGKILL cannot empty
        gets every process of the user killed, and an exit nobody reports (a stopped spawner
        helper) gets the helper replaced: a timeout always ends in an answer."""
        # The command leads its own session, so its pid is also its process group id.
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            delivered = False
        else:
            delivered = True
        if signum == signal.SIGKILL and self.ending is None and (delivered or escalate):
            self.ending = asyncio.get_running_loop().create_task(self._end(escalate))
        return delivered

    async def _end(self, escalate: bool) -> None:
        """Freeze and kill the command's tree until none of it is left (zombies count: the
        pids limit does). A fork bomb was seen to leave members alive after one SIGKILL to its
        group, and its dying members to fill the pids limit after the answer was sent."""
        emptied = await end_tree(self.pid, ESCALATE_SECONDS)
        if not emptied and escalate and self.hooks is not None:
            if all(state == "Z" for state in tree(self.pid).values()):
                # Dead but unreaped: their parent, the helper, is stuck. Replace it and the
                # container's init reaps them.
                self.hooks.exit_unreported()
            else:
                await self.hooks.kill_everything()
        if not emptied:
            await end_tree(self.pid, GROUP_KILL_SECONDS - ESCALATE_SECONDS)
        if not escalate or self.hooks is None:
            return
        try:
            await asyncio.wait_for(self._exited.wait(), EXIT_REPORT_SECONDS)
        except TimeoutError:
            self.hooks.exit_unreported()

    # -- subscribers ----------------------------------------------------------------------------

    def subscribe(
        self,
        request_id: Any,
        *,
        primary: bool,
        stream: bool,
        encoding: str,
        window: int,
        collect_limit: int | None = None,
        replay: bool = True,
        binary: bool = False,
    ) -> Subscriber:
        subscriber = Subscriber(
            request_id=request_id,
            cursor=self.log.start if replay else self.log.end,
            primary=primary,
            stream=stream,
            encoder=Encoder(encoding),
            credit=window,
            collected=Collected(collect_limit) if collect_limit is not None else None,
            binary=binary,
        )
        self.subscribers.append(subscriber)
        return subscriber

    async def unsubscribe(self, subscriber: Subscriber) -> None:
        async with self.cond:
            subscriber.closed = True
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)
            self.cond.notify_all()

    async def grant(self, subscriber: Subscriber, n: int) -> None:
        async with self.cond:
            subscriber.grant(n)
            self.cond.notify_all()

    async def follow(self, subscriber: Subscriber, emit: Emit) -> None:
        """Deliver output to one subscriber until the process is finished and all is sent."""

        def can_progress() -> bool:
            if subscriber.closed:
                return True
            if subscriber.cursor < self.log.end:
                return not subscriber.stream or subscriber.credit > 0
            return self.finished.is_set()

        while True:
            events: list[Event] = []
            async with self.cond:
                await self.cond.wait_for(can_progress)
                if subscriber.closed:
                    return
                subscriber.take(self.log, self.pid, events.append)
                done = self.finished.is_set() and subscriber.cursor >= self.log.end
                self.cond.notify_all()  # the pipe reader may be waiting for room
            for event in events:
                await emit(event)
            if done:
                tail: list[Event] = []
                subscriber.flush(self.pid, tail.append)
                for event in tail:
                    await emit(event)
                return

    def exit_event(self, request_id: Any) -> dict[str, Any]:
        return {
            "id": request_id,
            "type": "exit",
            "pid": self.pid,
            "exitCode": self.exit_code,
            "signal": self.signal,
            "timedOut": self.timed_out,
            "oom": self.oom,
            "durationMs": self.duration_ms,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "cmd": self.cmd,
            "args": self.args,
            "running": self.running,
            "background": self.background,
            "pty": self.master_fd is not None,
            "startedAt": self.started_at,
            "exitCode": self.exit_code,
            "signal": self.signal,
            "durationMs": self.duration_ms,
            "outputBytes": self.log.end,
            "bufferedBytes": self.log.end - self.log.start,
        }


class ProcessTable:
    """Running processes, and the last `keep_exited` background ones that exited."""

    def __init__(
        self, identity: Identity, spawner: Spawner | None = None, keep_exited: int = 64
    ) -> None:
        self._identity = identity
        self._spawner = spawner
        self._running: dict[int, ManagedProcess] = {}
        self._exited: OrderedDict[int, ManagedProcess] = OrderedDict()
        self._keep_exited = keep_exited
        # Commands whose output was still held at their end, by what they left running.
        self._left_behind: deque[int] = deque(maxlen=keep_exited)
        self._tasks: set[asyncio.Task[None]] = set()
        self._hooks = (
            KillHooks(self._kill_every_user_process, self._replace_helper)
            if identity.uid is not None
            else None
        )

    @property
    def spawner(self) -> Spawner | None:
        """How user processes start (None: directly, when the agent is the user already)."""
        return self._spawner

    async def _kill_every_user_process(self) -> None:
        assert self._identity.uid is not None
        await kill_user_processes(self._identity.uid)

    def _replace_helper(self) -> None:
        if self._spawner is not None:
            self._spawner.replace_helper("a killed command's exit went unreported")

    async def start(
        self,
        cmd: str,
        args: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        log_capacity: int,
        background: bool,
        stdin: bool,
        pty_size: PtySize | None = None,
        identity: Identity | None = None,
    ) -> ManagedProcess:
        """Start a command as the sandbox user, or as `identity` (root, started by the agent
        itself: the spawner helper runs as the user)."""
        as_other = identity is not None and identity is not self._identity
        # A command being ended (timed out, cancelled, its client gone) may still fill the
        # pids limit: this one would fail to start until its tree is gone.
        await self._endings()
        for attempt in range(2):
            try:
                proc, master_fd = await start_process(
                    identity if as_other and identity is not None else self._identity,
                    None if as_other else self._spawner,
                    cmd,
                    args,
                    cwd=cwd,
                    env=env,
                    stdin=stdin,
                    pty_size=pty_size,
                )
                break
            except OSError as exc:
                # The pids limit is full: a command ended meanwhile is waited for, and a fork
                # bomb an earlier command left behind (one that had not reached the limit yet
                # at that command's end) is ended; then one more try.
                if exc.errno != errno.EAGAIN or attempt:
                    raise
                if not await self._endings() and not await self._end_storms():
                    raise
        process = ManagedProcess(
            proc,
            cmd=cmd,
            args=args,
            log_capacity=log_capacity,
            background=background,
            master_fd=master_fd,
        )
        process.hooks = self._hooks
        self._running[process.pid] = process
        task = asyncio.create_task(self._supervise(process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return process

    async def _supervise(self, process: ManagedProcess) -> None:
        try:
            await process.run()
        finally:
            self._running.pop(process.pid, None)
            if process.left_behind:
                self._left_behind.append(process.pid)
            if process.background:
                self._exited[process.pid] = process
                while len(self._exited) > self._keep_exited:
                    self._exited.popitem(last=False)

    async def _endings(self) -> bool:
        """Wait for the commands being ended to be gone; whether there were any."""
        endings = [p.ending for p in self._running.values() if p.ending and not p.ending.done()]
        if endings:
            await asyncio.wait(endings, timeout=ENDING_WAIT_SECONDS)
        return bool(endings)

    async def _end_storms(self) -> bool:
        """End the trees that earlier commands left behind with STORM_MEMBERS processes or
        more; whether there was one."""
        table = processes()
        storms = [
            pid
            for pid in set(self._left_behind)
            if pid not in self._running and len(tree(pid, table)) >= STORM_MEMBERS
        ]
        for pid in storms:
            await end_tree(pid, GROUP_KILL_SECONDS)
        return bool(storms)

    def get(self, pid: object) -> ManagedProcess:
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise AgentError(BAD_REQUEST, "field 'pid' must be an integer")
        process = self._running.get(pid) or self._exited.get(pid)
        if process is None:
            raise AgentError(NOT_FOUND, f"no process with pid {pid}")
        return process

    def all(self) -> list[ManagedProcess]:
        return [*self._running.values(), *self._exited.values()]

    def kill_all(self) -> None:
        for process in list(self._running.values()):
            process.kill_group()


def resize(process: ManagedProcess, size: PtySize) -> None:
    if process.master_fd is None:
        raise AgentError(BAD_REQUEST, f"process {process.pid} has no terminal")
    if not process.running:
        raise AgentError(NOT_FOUND, f"process {process.pid} has exited")
    set_winsize(process.master_fd, size)
