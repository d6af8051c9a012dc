"""The agent's main loop: read requests, run each as its own task, answer every one.

Every request gets exactly one final message (a response or an `error`); streaming requests
send `output` and other events before it. `credit` (flow control from the orchestrator) is the
one message that gets no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from . import (
    PROTOCOL_VERSION,
    __version__,
    commands,
    egress,
    files,
    interpreter,
    manifest,
    tunnel,
    usage,
    watch,
)
from .bulk import BulkSocket
from .context import READ_GATE_BYTES, Request, Subscriptions
from .errors import BAD_REQUEST, CANCELLED, INTERNAL, TOO_LARGE, UNKNOWN_TYPE, AgentError
from .fields import required_int
from .frames import DATA, MAX_FRAME, InFrame, OversizeFrame, StreamSplitter
from .gate import ByteGate
from .helper import ForkedHelper
from .identity import FileWorkers, Identity, IdentityError, assume, parse_identity
from .processes import ProcessTable
from .proxy import EgressProxy
from .settings import AgentSettings
from .spawner import Spawner
from .wire import Outbox, open_stdout, widen_pipe

Message = dict[str, Any]
Handler = Callable[[Request], Awaitable[Message]]

log = logging.getLogger("insien_agent")

HANDLERS: dict[str, Handler] = {
    "exec": commands.handle_exec,
    "spawn": commands.handle_spawn,
    "attach": commands.handle_attach,
    "stdin": commands.handle_stdin,
    "signal": commands.handle_signal,
    "resize": commands.handle_resize,
    "processes": commands.handle_processes,
    "killAll": commands.handle_kill_all,
    "write": files.handle_write,
    "read": files.handle_read,
    "list": files.handle_list,
    "stat": files.handle_stat,
    "exists": files.handle_exists,
    "mkdir": files.handle_mkdir,
    "remove": files.handle_remove,
    "rename": files.handle_rename,
    "watch": watch.handle_watch,
    "tunnel": tunnel.handle_tunnel,
    "tunnelSend": tunnel.handle_tunnel_send,
    "egressListen": egress.handle_egress_listen,
    "egressOpen": egress.handle_egress_open,
    "egressRefuse": egress.handle_egress_refuse,
    "createContext": interpreter.handle_create_context,
    "listContexts": interpreter.handle_list_contexts,
    "restartContext": interpreter.handle_restart_context,
    "removeContext": interpreter.handle_remove_context,
    "interruptCode": interpreter.handle_interrupt,
    "runCode": interpreter.handle_run_code,
    "warmContexts": interpreter.handle_warm_contexts,
    "usage": usage.handle_usage,
    "manifest": manifest.handle_manifest,
}
FEATURES = ("tunnelWithData",)
"""What this agent does beyond its request types, for a server to check before relying on it."""
BUILTIN = ("ack", "cancel", "credit", "env", "note", "ping", "resume")
MAX_NOTES_BYTES = 64 * 1024
MAX_ENV_BYTES = 1024 * 1024


def _valid_id(value: object) -> bool:
    return value is None or (isinstance(value, (str, int)) and not isinstance(value, bool))


def _after_claim(claim: asyncio.Future[bytes], handler: Handler) -> Handler:
    """The handler, once the request's data frame has come on the bulk socket (a request
    cancelled meanwhile cancels its claim, and its frame is dropped)."""

    async def claimed(request: Request) -> Message:
        request.payload = await claim
        return await handler(request)

    return claimed


class Agent:
    """Owns the request tasks; each answers exactly once, success or error."""

    def __init__(
        self,
        outbox: Outbox,
        settings: AgentSettings,
        identity: Identity,
        helper: ForkedHelper | None = None,
        bulk: BulkSocket | None = None,
    ) -> None:
        self._outbox = outbox
        self._bulk = bulk
        """The bulk socket, when listening (hello announces it; `bulkAttach` attaches one)."""
        self._settings = settings
        self._identity = identity
        self._files = FileWorkers(identity)
        # Commands as the user start through a helper that can vfork (see spawner.py).
        self._spawner = Spawner(identity, sys.argv[0], helper) if identity.switches else None
        self._table = ProcessTable(identity, self._spawner)
        self._subscriptions = Subscriptions()
        self._tasks: dict[Any, asyncio.Task[None]] = {}
        self._answers: set[asyncio.Future[None]] = set()
        self._notes: dict[str, Any] = {}
        self._environment: dict[str, str] = {}
        self._egress = EgressProxy()
        self._contexts = interpreter.Contexts()
        self._reads = ByteGate(READ_GATE_BYTES)
        """The sandbox's own variables (create's `env`), for user commands only: the agent's
        process never sees them, so nothing a tenant chooses can change how it runs."""
        self._last_int_id = 0
        self._channels: dict[Any, int] = {}
        """The channel of each request in flight that has one (a resume reports them)."""
        self._inbound: InFrame | None = None
        """The data frame the server sent just before the `write` it belongs to."""

    async def check_identity(self) -> None:
        """Fail at start, not at the first file request, if file threads cannot be the user."""
        try:
            euid = await self._files.run(os.geteuid)
        except BrokenThreadPool as exc:
            raise IdentityError("file worker threads could not switch to the user") from exc
        if self._identity.uid is not None and (euid, os.geteuid()) != (self._identity.uid, 0):
            raise IdentityError(f"file threads run as {euid} and the agent as {os.geteuid()}")

    def prestart_spawner(self) -> None:
        if self._spawner is not None:
            self._spawner.prestart()

    async def hello(self) -> None:
        await self._outbox.send(self._hello_message())

    def _hello_message(self) -> Message:
        bulk = self._bulk.path if self._bulk is not None else None
        return {
            "type": "ready",
            "protocol": PROTOCOL_VERSION,
            "agent": "insien-agent",
            "version": __version__,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "types": sorted([*HANDLERS, *BUILTIN, *(["bulkAttach"] if bulk else [])]),
            "features": list(FEATURES),
            **({"bulk": bulk} if bulk else {}),
            "uid": self._identity.uid if self._identity.switches else os.geteuid(),
        }

    async def error(self, request_id: object, code: str, message: str) -> None:
        await self._outbox.send(
            {"id": request_id, "type": "error", "code": code, "message": message}
        )

    async def receive(self, unit: bytes | InFrame | OversizeFrame | None) -> None:
        """One unit of stdin: a request line or a frame; never raises for bad input."""
        if isinstance(unit, OversizeFrame):
            self._inbound = None
            await self.error(None, TOO_LARGE, f"a frame of {unit.size} bytes, over {MAX_FRAME}")
        elif isinstance(unit, InFrame):
            if self._inbound is not None:
                log.warning("a data frame on channel %d was never claimed", self._inbound.channel)
            self._inbound = unit
        else:
            await self.receive_line(unit)

    def _claim_payload(
        self, msg: Message
    ) -> tuple[int | None, bytes | None, asyncio.Future[bytes] | None]:
        """The request's channel, and for a `write`, a `tunnelSend` or a `tunnel` with
        `withData` on one, the frame sent just before it on stdin, or, with `"bulk": true`,
        a claim on its frame from the bulk socket (bulk.BulkSocket.claim)."""
        channel = msg.get("channel")
        if channel is None:
            return None, None, None
        if not isinstance(channel, int) or isinstance(channel, bool) or channel < 0:
            raise AgentError(BAD_REQUEST, "field 'channel' must be a non-negative integer")
        carries = msg.get("type") in ("write", "tunnelSend")
        if not carries and not (msg.get("type") == "tunnel" and msg.get("withData") is True):
            return channel, None, None
        if msg.get("bulk") is True:
            if self._bulk is None:
                raise AgentError(BAD_REQUEST, "this agent has no bulk socket")
            return channel, None, self._bulk.claim(channel)
        frame, self._inbound = self._inbound, None
        if frame is None or frame.channel != channel or frame.kind != DATA:
            raise AgentError(BAD_REQUEST, f"no data frame came for channel {channel}")
        return channel, frame.data, None

    async def receive_line(self, line: bytes | None) -> None:
        """Parse one request line and start its handler; never raises for bad input."""
        if line is None:
            limit = self._settings.max_line
            await self.error(None, TOO_LARGE, f"request line exceeds {limit} bytes")
            return
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            await self.error(None, BAD_REQUEST, "request is not valid JSON")
            return
        if not isinstance(msg, dict):
            await self.error(None, BAD_REQUEST, "request must be a JSON object")
            return
        request_id = msg.get("id")
        if not _valid_id(request_id):
            await self.error(None, BAD_REQUEST, "field 'id' must be a string or an integer")
            return
        kind = msg.get("type")
        if not isinstance(kind, str):
            await self.error(request_id, BAD_REQUEST, "field 'type' must be a string")
            return
        if isinstance(request_id, int) and not isinstance(request_id, bool):
            self._last_int_id = max(self._last_int_id, request_id)
        try:
            if kind == "credit":
                await self._credit(msg)
                return
            if kind == "ack":
                self._outbox.ack(required_int(msg, "seq", minimum=0))
                return
            if kind == "note":
                self._note(msg)
                return
            if kind == "env":
                self._set_environment(msg)
                return
            if kind == "resume":
                after = required_int(msg, "after", minimum=0)
                # A frame a killed server left for a request it never sent is nobody's.
                self._inbound = None
                await self._outbox.resume(request_id, after, self._resume_state())
                return
            if kind == "cancel":
                await self._outbox.send({"id": request_id, **self._cancel(msg)})
                return
            if kind == "ping":
                await self._outbox.send({"id": request_id, "type": "pong", "time": time.time()})
                return
        except AgentError as exc:
            await self.error(request_id, exc.code, exc.message)
            return
        handler = HANDLERS.get(kind)
        if kind == "bulkAttach" and self._bulk is not None and self._bulk.path is not None:
            handler = self._bulk.handle_attach
        if handler is None:
            await self.error(request_id, UNKNOWN_TYPE, f"unknown request type {kind!r}")
            return
        if request_id is not None and request_id in self._tasks:
            await self.error(request_id, BAD_REQUEST, f"id {request_id!r} is already in flight")
            return
        try:
            channel, payload, claim = self._claim_payload(msg)
        except AgentError as exc:
            await self.error(request_id, exc.code, exc.message)
            return
        if claim is not None:
            handler = _after_claim(claim, handler)
        request = Request(
            request_id,
            msg,
            self._settings,
            self._table,
            self._outbox,
            self._subscriptions,
            self._identity,
            self._files,
            self._environment,
            self._reads,
            channel=channel,
            payload=payload,
            egress=self._egress,
            contexts=self._contexts,
        )
        task = asyncio.create_task(self._run(handler, request))
        key: Any = request_id if request_id is not None else object()  # id-less: not cancellable
        self._tasks[key] = task
        if channel is not None:
            self._channels[key] = channel
        task.add_done_callback(lambda done: self._finished(key, request_id, done))

    def _finished(self, key: Any, request_id: Any, task: asyncio.Task[None]) -> None:
        self._tasks.pop(key, None)
        self._channels.pop(key, None)
        if task.cancelled():
            # Cancelled before its handler ever ran, so nothing answered it yet.
            answer = asyncio.ensure_future(
                self.error(request_id, CANCELLED, "the request was cancelled")
            )
            self._answers.add(answer)
            answer.add_done_callback(self._answers.discard)

    def _note(self, msg: Message) -> None:
        """Keep what the orchestrator wants back after a restart (its own bookkeeping)."""
        notes = msg.get("notes")
        if not isinstance(notes, dict):
            raise AgentError(BAD_REQUEST, "field 'notes' must be an object")
        merged = {**self._notes, **notes}
        if len(json.dumps(merged)) > MAX_NOTES_BYTES:
            raise AgentError(TOO_LARGE, f"notes exceed {MAX_NOTES_BYTES} bytes")
        self._notes = merged

    def _set_environment(self, msg: Message) -> None:
        """The orchestrator's `env` message: variables every later user command gets."""
        env = msg.get("env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise AgentError(BAD_REQUEST, "field 'env' must map names to strings")
        if len(json.dumps(env)) > MAX_ENV_BYTES:
            raise AgentError(TOO_LARGE, f"env exceeds {MAX_ENV_BYTES} bytes")
        self._environment.clear()
        self._environment.update(env)

    def _resume_state(self) -> Message:
        """What a restarted orchestrator needs besides the replayed messages."""
        return {
            "notes": self._notes,
            "inFlight": [key for key in self._tasks if _valid_id(key) and key is not None],
            "lastId": self._last_int_id,
            "hello": self._hello_message(),
            "channels": {channel: key for key, channel in self._channels.items()},
        }

    async def _credit(self, msg: Message) -> None:
        n = required_int(msg, "n", minimum=1)
        target = msg.get("target")
        found = self._subscriptions.by_request.get(target)
        if found is not None:
            process, subscriber = found
            await process.grant(subscriber, n)
        watcher = self._subscriptions.watchers.get(target)
        if watcher is not None:
            watcher.grant(n)
        opened = self._subscriptions.tunnels.get(target)
        if opened is not None:
            opened.grant(n)

    def _cancel(self, msg: Message) -> Message:
        target = msg.get("target")
        if not _valid_id(target) or target is None:
            raise AgentError(BAD_REQUEST, "field 'target' must be a request id")
        task = self._tasks.get(target)
        if task is not None:
            task.cancel()
        return {"type": "cancelResponse", "target": target, "cancelled": task is not None}

    async def _run(self, handler: Handler, request: Request) -> None:
        try:
            await self._answer(handler, request)
        finally:
            for release in request.after_answer:
                release()

    async def _answer(self, handler: Handler, request: Request) -> None:
        try:
            response = await handler(request)
        except AgentError as exc:
            await self.error(request.id, exc.code, exc.message)
            return
        except asyncio.CancelledError:
            # Cancelled by a `cancel` for a request that cannot be interrupted half-way.
            await self.error(request.id, CANCELLED, "the request was cancelled")
            return
        except Exception as exc:
            log.exception("request %r failed", request.id)
            await self.error(request.id, INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        await self._outbox.send({"id": request.id, **response})

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stdin closed: let requests finish for a moment, then stop everything we started."""
        pending = list(self._tasks.values())
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for task in list(self._tasks.values()):
            task.cancel()
        self._table.kill_all()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._files.close()
        if self._spawner is not None:
            self._spawner.close()
        if self._bulk is not None:
            self._bulk.close()


async def serve(settings: AgentSettings, helper: ForkedHelper | None = None) -> None:
    """Run the agent on stdio; `helper` is the spawner helper forked before the event loop."""
    loop = asyncio.get_running_loop()
    identity = parse_identity(settings.user, settings.workdir)
    assume(identity, settings.workdir)
    widen_pipe(0)
    widen_pipe(1)
    reader = asyncio.StreamReader(limit=1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    outbox = Outbox(await open_stdout(), settings.max_line, settings.replay_bytes)
    bulk = BulkSocket()
    if await bulk.listen(identity):
        outbox.bulk = bulk
    agent = Agent(outbox, settings, identity, helper, bulk)
    await agent.check_identity()
    agent.prestart_spawner()
    await agent.hello()
    splitter = StreamSplitter(settings.max_line)
    while chunk := await reader.read(256 * 1024):
        for unit in splitter.feed(chunk):
            try:
                await agent.receive(unit)
            except Exception as exc:  # a bug on odd input must not end the agent
                log.exception("request line failed")
                await agent.error(None, INTERNAL, f"{type(exc).__name__}: {exc}")
    await agent.shutdown()
