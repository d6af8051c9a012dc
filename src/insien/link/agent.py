"""AgentLink: one sandbox agent's stdio as a multiplexed, bounded JSON-RPC channel.

The link gives every request its own id on the agent side, so any number of clients can share
one agent without their ids colliding, and routes the agent's answers and events back to the
request that caused them. One reader task and one writer task own the agent's channel (see
`runtime.base.AgentChannel`: plain stdout and stderr, whatever the runtime's framing).

The reader, the writer, the routing of answers and frames and the request API are kept in this
one module because they share the link's state (pending requests, sequence numbers, acks).
The parts with a life of their own are modules of their own: one request's messages and credit
(`pending`), the byte contract (`replies`), sessions, budgets, binary channels (`channels`),
line and frame reassembly (`lines`, `frames`) and the agent's stderr (`stderr`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from ..protocol import ErrorCode, Message, ProtocolError, error_message, is_final
from ..runtime.base import AgentChannel, BulkCapable, StreamCorrupt, StreamKind
from .budget import ByteBudget
from .bulk import BulkConnection
from .channels import ChannelTable
from .frames import (
    HEADER,
    RESYNC,
    STREAM_NAMES,
    Frame,
    FrameKind,
    FramingError,
    UnitAssembler,
    encode_frame,
)
from .lines import LineAssembler, OversizeLine
from .pending import PendingRequest
from .replies import Reply, encode, excerpt, split_seq
from .sessions import SessionStore, is_session_id
from .stderr import STDERR_LINE_MAX, AgentStderr

log = logging.getLogger("insien.link")

OUTGOING_QUEUE = 8
"""Request lines waiting for the writer; senders block beyond this (back-pressure)."""
EVENTS_PER_REQUEST = 64
"""Messages buffered for one request. The agent sends at most its window of output events
(8) before the link grants more, so a well-behaved agent never fills this."""
CANCEL_TIMEOUT = 5.0
RESUME_ID = "insien-resume"
BULK_SEND_GRACE = 10.0
"""Longest a data frame and its line may take on the bulk socket before it is given up."""
REPLAY_ID = "insien-replay"
"""The `resume` a link sends mid-stream when frames written to a lost bulk socket must come
again on stdio (its marker only moves the link's sequence on)."""
ACK_EVERY = 64
ACK_BYTES = 1024 * 1024
ACK_DELAY = 0.25
"""Acks go out after this many messages or bytes, or this long after the last message."""


class _NoChannel:
    """The channel of a link that never had one (`AgentLink.gone`)."""

    async def send_all(self, data: bytes) -> None:
        raise trio.ClosedResourceError("no agent")

    async def receive(self) -> tuple[StreamKind, bytes] | None:
        await trio.lowlevel.checkpoint()
        return None

    async def aclose(self) -> None:
        return None


class AgentGone(Exception):
    """The agent's stream ended: it exited, its container died, or the sandbox was destroyed."""


class AgentProtocolError(Exception):
    """The agent wrote something no well-behaved agent writes: the sandbox is ended for it.

    Everything that comes out of a container is hostile input. A line that does not parse, a
    nesting bomb, a non-object, an over-long line or broken framing ends that one sandbox
    (reason `agent_protocol_error`); it never reaches the manager's nursery.
    """


TRAFFIC_KINDS = {
    "files": frozenset(
        {"read", "write", "list", "stat", "remove", "rename", "mkdir", "watch", "exists"}
    ),
    "ports": frozenset({"tunnel", "tunnelSend"}),
    "egress": frozenset({"egressListen", "egressOpen", "egressRefuse"}),
    "code": frozenset(
        {
            "runCode",
            "createContext",
            "listContexts",
            "restartContext",
            "removeContext",
            "interruptCode",
            "warmContexts",
        }
    ),
}


def traffic_kind(request_type: str) -> str:
    """What a request's bytes count as: files, ports, egress, code, or commands (the rest)."""
    for kind, types in TRAFFIC_KINDS.items():
        if request_type in types:
            return kind
    return "commands"


class AgentLink:
    """Request multiplexing over an attached agent. Run `run()` in a nursery, then `request()`."""

    def __init__(
        self,
        channel: AgentChannel,
        *,
        name: str,
        max_line: int,
        resume_after: int | None = None,
        resync: bool = False,
    ) -> None:
        """With `resume_after`, the link joins an agent already running (the server restarted):
        it asks for every message numbered above it, and ignores the stream until they come.
        `resync` first ends whatever line or frame a killed predecessor left unfinished on the
        agent's stdin (frames.RESYNC)."""
        self._channel = channel
        self._name = name
        self.max_line = max_line
        self._resume_after = resume_after
        self._resync = resync
        self.last_seq = resume_after or 0
        self._acked = self.last_seq
        self._unacked_bytes = 0
        self._unacked = trio.Event()
        self.detached = False
        self._outgoing_send, self._outgoing_receive = trio.open_memory_channel[bytes](
            OUTGOING_QUEUE
        )
        self._pending: dict[int | str, trio.MemorySendChannel[Reply]] = {}
        # Binary channels: which request each belongs to, and each request's channel. A
        # channel lives until its request's final message, so frames replayed after a
        # restart still find their (adopted or orphaned session) request.
        self._channels = ChannelTable()
        self._budgets: dict[int | str, ByteBudget] = {}
        # Session requests the agent still runs after a restart, and answers of session
        # requests nobody waits for any more: both wait for the session to connect again.
        self._sessions = SessionStore()
        self._ids = itertools.count(1)
        self.hello: Message | None = None
        self.resumed: Message | None = None
        self.ready = trio.Event()
        self.closed = trio.Event()
        self.close_reason = ""
        self.protocol_error = False
        """True when the link closed because the agent broke the protocol."""
        self.stderr = AgentStderr(log, name)
        self.traffic: dict[tuple[str, str], int] = {}
        """Bytes to (`out`) and from (`in`) the agent by what they were for (`traffic_kind`)."""
        self._kinds: dict[int | str, str] = {}
        self.on_request_done: Callable[[str, float], None] | None = None
        """Told each request's type and how long it took, send to final answer (metrics)."""
        # The bulk socket (docs/protocol.md, "The bulk socket"): where it is on this host, the
        # connection while its reader runs, and whether the agent has attached it (its
        # `bulkAttachResponse` was read: everything numbered after it may be on the socket).
        self._bulk_path = channel.bulk_socket if isinstance(channel, BulkCapable) else None
        self._bulk: BulkConnection | None = None
        self._bulk_attached = False
        self._gaps_are_losses = False
        """The agent announced a bulk socket, so it may have written frames to one that is
        gone (this link's, or a killed predecessor's): a gap in the sequence that this link's
        socket cannot fill is asked for again (a mid-stream `resume`)."""
        self._replaying = False
        self._turn = trio.Event()
        """Set (and replaced) whenever `last_seq` moves or the bulk socket comes or goes."""

    @classmethod
    def gone(cls, *, name: str, reason: str) -> AgentLink:
        """A link that is closed from the start: the record of a sandbox found dead."""
        link = cls(_NoChannel(), name=name, max_line=0)
        link._close(reason)
        return link

    @property
    def open_channels(self) -> int:
        """Binary channels whose requests have not ended (a leak shows here)."""
        return len(self._channels)

    @property
    def connected(self) -> bool:
        return self.ready.is_set() and not self.closed.is_set()

    @property
    def bulk_attached(self) -> bool:
        """Whether frames and uploads travel on the bulk socket now."""
        return self._bulk_attached

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pump the stream until the agent goes away; then fail every request still waiting."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._ack_when_quiet)
                if self._bulk_path is not None:
                    nursery.start_soon(self._open_bulk, nursery, self._bulk_path)
                if self._resync:
                    await self._outgoing_send.send(RESYNC)
                if self._resume_after is not None:
                    await self._outgoing_send.send(
                        encode({"id": RESUME_ID, "type": "resume", "after": self._resume_after})
                    )
                task_status.started()
                await self._read_loop()
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
            self.close_reason = f"attach stream broke: {group.exceptions[0]}"
        except* (StreamCorrupt, AgentProtocolError, FramingError) as group:
            self.protocol_error = True
            self.close_reason = f"agent protocol error: {group.exceptions[0]}"
            log.error("%s: %s", self._name, self.close_reason)
        except* Exception as group:
            # A bug of ours on hostile input must still end only this sandbox.
            self.protocol_error = True
            first = group.exceptions[0]
            self.close_reason = f"agent protocol error: {type(first).__name__}: {first}"
            log.error("%s: %s", self._name, self.close_reason, exc_info=first)
        finally:
            self._close(self.close_reason or "agent stream closed")
            with trio.CancelScope(shield=True):
                await self._channel.aclose()

    def _close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        self._outgoing_send.close()
        for request_id, channel in self._pending.items():
            if not self.detached:
                gone = error_message(request_id, ErrorCode.AGENT_GONE, reason)
                with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    channel.send_nowait(Reply(gone, encode(gone)))
            channel.close()
        self._pending.clear()
        self._budgets.clear()
        self._channels.clear()

    async def _write_loop(self) -> None:
        async with self._outgoing_receive:
            async for line in self._outgoing_receive:
                await self._channel.send_all(line)

    async def _read_loop(self) -> None:
        stdout = UnitAssembler(self.max_line)
        stderr = LineAssembler(STDERR_LINE_MAX)
        while (piece := await self._channel.receive()) is not None:
            kind, data = piece
            if kind is StreamKind.STDERR:
                for line in stderr.feed(data):
                    self.stderr.line(line)
                continue
            for unit in stdout.feed(data):
                if isinstance(unit, Frame):
                    await self._take_frame(unit, on_bulk=False)
                else:
                    await self._dispatch(unit)
                del unit  # a line can be 32 MB: not held here while the next piece is awaited
            self._received(len(data))

    def _received(self, size: int) -> None:
        self._unacked_bytes += size
        if self.last_seq - self._acked >= ACK_EVERY or self._unacked_bytes >= ACK_BYTES:
            self._acknowledge()
        elif self.last_seq > self._acked:
            self._unacked.set()

    def _moved(self) -> None:
        self._turn.set()
        self._turn = trio.Event()

    async def _in_turn(self, seq: int, *, on_bulk: bool) -> bool:
        """Whether the unit numbered `seq` is next, waiting while an earlier one is still on
        its way on the other path; False for one already seen or one to drop.

        The agent numbers lines and frames in one sequence and sends each on stdio or the
        bulk socket: the link merges the two back into that order, so nothing about a request
        (its events, its frames, its final answer) can overtake anything before it. A gap on
        stdio with no bulk socket left means frames went into one that was lost: they are
        still in the agent's replay buffer, and a mid-stream `resume` has them sent again on
        stdio (units after the gap are dropped meanwhile; they come again too)."""
        while True:
            if seq <= self.last_seq:
                return False
            if seq == self.last_seq + 1 or not self._gaps_are_losses:
                return True  # without a bulk socket, as ever
            if on_bulk or (self._bulk is not None and self._bulk_attached):
                # The other path has what comes first. (What a bulk frame waits for is on
                # stdio, or lost with an older socket: then stdio has a gap before this
                # link's `bulkAttachResponse`, and asks for it again.)
                await self._turn.wait()
                continue
            self._replay()
            return False

    def _replay(self) -> None:
        if self._replaying or not self.ready.is_set():
            return
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._outgoing_send.send_nowait(
                encode({"id": REPLAY_ID, "type": "resume", "after": self.last_seq})
            )
            self._replaying = True
            log.info("%s: asking again for frames lost with the bulk socket", self._name)

    def _replayed(self, marker: Message) -> None:
        """The marker of a mid-stream `resume`: the replay after it fills the gap."""
        lost = marker.get("lost")
        if isinstance(lost, int) and lost > 0:
            log.warning("%s: %d agent messages were lost with the bulk socket", self._name, lost)
        self._skip_to_replay(marker)
        self._replaying = False
        self._moved()

    def _skip_to_replay(self, marker: Message) -> None:
        """What a resume marker's replay starts with (`first`) is next: anything before it was
        acknowledged (to this server or a predecessor) or lost, and will not come."""
        first = marker.get("first")
        if isinstance(first, int) and not isinstance(first, bool) and first > 0:
            self.last_seq = max(self.last_seq, first - 1)

    async def _take_frame(self, frame: Frame, *, on_bulk: bool) -> None:
        if frame.seq == 0:
            raise AgentProtocolError("a frame without a sequence number")
        if self._resume_after is not None and not self.ready.is_set():
            return  # rejoining: replayed after the marker
        if not await self._in_turn(frame.seq, on_bulk=on_bulk):
            return  # already seen before a restart, or to come again after a replay
        self.last_seq = frame.seq
        self._moved()
        self._dispatch_frame(frame)

    async def _open_bulk(self, nursery: trio.Nursery, path: str) -> None:
        """Once the agent has said hello, connect to its bulk socket and have it attached; a
        socket that cannot be reached (not announced, another runtime, gVisor) leaves
        everything on stdio."""
        await self.ready.wait()
        if not (self.hello or {}).get("bulk"):
            return
        try:
            bulk = await BulkConnection.open(path)
        except (OSError, trio.TooSlowError) as exc:
            log.info("%s: no bulk socket (%s): frames stay on stdio", self._name, exc)
            return
        self._bulk = bulk
        nursery.start_soon(self._bulk_read_loop, bulk)
        try:
            answer = await self.call({"type": "bulkAttach", "token": bulk.token.hex()})
        except AgentGone:
            return
        if answer.get("type") != "bulkAttachResponse" or self._bulk is not bulk:
            log.warning("%s: the agent did not attach the bulk socket: %.300s", self._name, answer)
            await self._lose_bulk(bulk)

    async def _bulk_read_loop(self, bulk: BulkConnection) -> None:
        """The agent's frames on the bulk socket, merged into the one sequence. The socket
        breaking is not the agent's end: frames go on stdio again (and any lost with the
        socket are asked for again); a frame no agent writes ends the sandbox as on stdio."""
        try:
            async for frame in bulk.frames():
                await self._take_frame(frame, on_bulk=True)
                self._received(len(frame.data) + HEADER.size)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("%s: the bulk socket broke: %s", self._name, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._lose_bulk(bulk)

    async def _lose_bulk(self, bulk: BulkConnection) -> None:
        if self._bulk is bulk:
            self._bulk = None
            if self._bulk_attached and not self.closed.is_set():
                self._replay()  # frames may have gone with it: have them again on stdio
            self._bulk_attached = False
            self._moved()
        await bulk.aclose()

    def _acknowledge(self) -> None:
        """Let the agent forget what has arrived (best effort: a full queue skips one ack).

        Acks are batched: one per request would cost the agent a wake-up per round trip."""
        if self.last_seq > self._acked and self.ready.is_set():
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._outgoing_send.send_nowait(
                    encode({"id": next(self._ids), "type": "ack", "seq": self.last_seq})
                )
                self._acked = self.last_seq
                self._unacked_bytes = 0

    async def _ack_when_quiet(self) -> None:
        """Acknowledge what a batch left over, a moment later (an idle link never wakes)."""
        while True:
            await self._unacked.wait()
            await trio.sleep(ACK_DELAY)
            self._unacked = trio.Event()
            self._acknowledge()

    async def _dispatch(self, line: bytes | OversizeLine) -> None:
        if isinstance(line, OversizeLine):
            # The agent keeps its own lines under the limit, so this is a broken or hostile agent.
            raise AgentProtocolError(f"a line of {line.size} bytes, over the limit")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: a nesting bomb
            raise AgentProtocolError(
                f"a line that is not JSON ({type(exc).__name__}): {excerpt(line)}"
            ) from None
        if not isinstance(message, dict):
            raise AgentProtocolError(f"a line that is not a JSON object: {excerpt(line)}")
        if self._resume_after is not None and not self.ready.is_set():
            # Rejoining: what the stream carried before the agent's marker is replayed after it.
            if message.get("type") == "resumeResponse" and message.get("id") == RESUME_ID:
                self._resumed(message)
            return
        if message.get("type") == "resumeResponse" and message.get("id") == REPLAY_ID:
            self._replayed(message)
            return
        line, seq = split_seq(line, message)
        if seq is not None:
            if not await self._in_turn(seq, on_bulk=False):
                return  # already seen before a restart, or to come again after a replay
            self.last_seq = seq
            self._moved()
        if message.get("type") == "bulkAttachResponse" and self._bulk is not None:
            self._bulk_attached = True  # now, in the sequence: what follows may be on it
        if message.get("type") == "ready":
            if not self.ready.is_set():
                self.hello = message
                self._gaps_are_losses = bool(message.get("bulk"))
                self.ready.set()
            return  # a hello replayed after a resume (a late attach) says nothing new
        request_id = message.get("id")
        if not isinstance(request_id, (int, str)) or isinstance(request_id, bool):
            log.warning("%s: agent reported %.300s", self._name, message)
            return
        self._route(request_id, Reply(message, line))

    def _dispatch_frame(self, frame: Frame) -> None:
        request_id = self._channels.owner(frame.channel)
        if request_id is None:
            return  # its request ended (cancelled, its client gone): nobody wants its bytes
        if frame.kind is FrameKind.DATA:
            message: Message = {"id": request_id, "type": "data"}
        else:
            message = {"id": request_id, "type": "output", "stream": STREAM_NAMES[frame.kind]}
        self._route(request_id, Reply(message, b"", data=frame.data))

    def _route(self, request_id: int | str, reply: Reply) -> None:
        """Hand one message or frame to the request it answers, within its byte budget."""
        message = reply.message
        kind = self._kinds.get(request_id)
        if kind is not None:
            self.traffic[(kind, "in")] = self.traffic.get((kind, "in"), 0) + reply.size
        channel = self._pending.get(request_id)
        terminal = is_final(message)
        if terminal:
            self._channels.forget(request_id)
        if channel is None:
            if is_session_id(request_id):
                self._sessions.keep(reply)
            return  # an answer for a request whose client has gone away
        budget = self._budgets.get(request_id)
        if budget is not None:
            if budget.try_take(reply.size):
                reply = reply._replace(charge=reply.size)
            else:
                # Its client holds too many bytes it has not read: answer BUSY instead of
                # holding more, and stop the request in the agent.
                busy = error_message(
                    request_id,
                    ErrorCode.BUSY,
                    "too many bytes are waiting for this connection to read them",
                )
                reply = Reply(busy, encode(busy))
                if not terminal:
                    self.send_internal_nowait({"type": "cancel", "target": request_id})
                terminal = True
        try:
            channel.send_nowait(reply)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            # The request's consumer fell behind or left; end it rather than buffer without bound.
            if budget is not None:
                budget.release(reply.charge)
            terminal = True
        if terminal:
            self._pending.pop(request_id, None)
            self._budgets.pop(request_id, None)
            channel.close()

    def _resumed(self, marker: Message) -> None:
        self.resumed = marker
        hello = marker.get("hello")
        self.hello = hello if isinstance(hello, dict) else {}
        self._gaps_are_losses = bool(self.hello.get("bulk"))
        self._skip_to_replay(marker)
        for agent_id in marker.get("inFlight") or []:
            if is_session_id(agent_id):
                self._adopt(str(agent_id))
        self._channels.adopt(marker.get("channels"))
        last_id = marker.get("lastId")
        if isinstance(last_id, int):
            self._ids = itertools.count(last_id + 1)  # never reuse an id the agent has seen
        if marker.get("lost"):
            log.warning(
                "%s: %d agent messages were lost while detached", self._name, marker["lost"]
            )
        self.ready.set()

    def _adopt(self, agent_id: str) -> None:
        send, receive = trio.open_memory_channel[Reply](EVENTS_PER_REQUEST)
        self._pending[agent_id] = send
        self._sessions.adopt(agent_id, PendingRequest(self, agent_id, receive))

    def take_session(
        self, session: str, budget: ByteBudget | None = None
    ) -> tuple[list[Reply], dict[str, PendingRequest]]:
        """What a reconnecting session gets: answers kept for it, and its requests in flight
        (charged to `budget` from now on)."""
        mine, adopted = self._sessions.take(session)
        for key in adopted:
            if budget is not None:
                self._budgets[key] = budget
                adopted[key].budget = budget
        return mine, adopted

    async def release(self, pending: PendingRequest) -> None:
        """An adopted request's new client is done with it: if it has not finished, cancel it,
        as leaving `request()` early does."""
        pending.drain()
        self._budgets.pop(pending.agent_id, None)
        channel = self._pending.pop(pending.agent_id, None)
        if channel is not None:
            channel.close()
            with trio.move_on_after(CANCEL_TIMEOUT, shield=True):
                await self.cancel(pending.agent_id)

    def detach(self) -> None:
        """Let go of the agent without ending anything in it (the server is restarting):
        requests in flight are neither cancelled nor failed with AGENT_GONE."""
        self.detached = True
        self._close("the server is restarting")

    @asynccontextmanager
    async def request(
        self,
        message: Message,
        agent_id: str | None = None,
        budget: ByteBudget | None = None,
        *,
        binary: bool = False,
        payload: bytes | None = None,
        bulk: bool = True,
    ) -> AsyncIterator[PendingRequest]:
        """Send one request; yields a PendingRequest to iterate over what the agent answers.

        Iteration ends after the final message (a response or an error). Leaving the block
        before that tells the agent to cancel the request: a foreground command is killed, a
        background process is only no longer followed.

        `binary` opens a channel for the request: its output or file content comes as frames
        (Replies with `data`). `payload` goes to the agent as a data frame on that channel just
        before the request (a `write` with no `content`): on the bulk socket when it is
        attached (and `bulk` allows it), else on stdio.
        """
        if self.closed.is_set():
            raise AgentGone(self.close_reason)
        request_id: int | str = next(self._ids) if agent_id is None else agent_id
        if request_id in self._pending:
            raise ProtocolError(
                message.get("id"), ErrorCode.BAD_REQUEST, "this id is already in flight"
            )
        outgoing = {k: v for k, v in message.items() if k != "channel"}
        outgoing["id"] = request_id
        via_bulk = self._bulk if payload is not None and bulk and self._bulk_attached else None
        line = b""
        if via_bulk is None:
            line = self._request_line(outgoing, request_id, binary or payload is not None)
            if payload is not None:
                line = encode_frame(outgoing["channel"], FrameKind.DATA, payload) + line
        send, receive = trio.open_memory_channel[Reply](EVENTS_PER_REQUEST)
        self._pending[request_id] = send
        if budget is not None:
            self._budgets[request_id] = budget
        pending = PendingRequest(self, request_id, receive, budget)
        request_type = str(message.get("type"))
        kind = self._kinds[request_id] = traffic_kind(request_type)
        started = trio.current_time()
        try:
            try:
                if via_bulk is not None and payload is not None:
                    line = await self._send_by_bulk(via_bulk, outgoing, request_id, payload)
                else:
                    await self._outgoing_send.send(line)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise AgentGone(self.close_reason) from None
            self.traffic[(kind, "out")] = self.traffic.get((kind, "out"), 0) + len(line)
            try:
                yield pending
            finally:
                pending.drain()  # before closing: what is dropped must be released
                receive.close()
        finally:
            pending.drain()
            self._kinds.pop(request_id, None)
            if self.on_request_done is not None:
                self.on_request_done(request_type, trio.current_time() - started)
            if not is_session_id(request_id):
                self._channels.forget(request_id)
            if self._pending.get(request_id) is send:
                del self._pending[request_id]
                self._budgets.pop(request_id, None)
                with trio.move_on_after(CANCEL_TIMEOUT, shield=True):
                    await self.cancel(request_id)
            send.close()

    def _request_line(self, outgoing: Message, request_id: int | str, channel: bool) -> bytes:
        """The request as its line, with a new channel bound to it if it needs one."""
        if channel:
            outgoing["channel"] = next(self._ids)  # never reused, across restarts too (`lastId`)
        line = encode(outgoing)
        if len(line) > self.max_line:
            raise ProtocolError(
                outgoing.get("id"),
                ErrorCode.TOO_LARGE,
                f"message of {len(line)} bytes exceeds the {self.max_line} byte limit",
            )
        if channel:
            self._channels.bind(outgoing["channel"], request_id)
        return line

    async def _send_by_bulk(
        self, bulk: BulkConnection, outgoing: Message, request_id: int | str, payload: bytes
    ) -> bytes:
        """The data frame on the bulk socket, then its request line (`"bulk": true`) on
        stdio; returns what went out. The agent pairs them by order: under the socket's lock a
        request takes its channel number, sends its frame whole and queues its line, so frames
        go in the order of their lines with rising channels (docs/protocol.md). A socket that
        breaks before the frame is whole is given up and the frame goes on stdio after all.

        The frame and its line go together or the socket is given up: a request cancelled
        half-way (its client left) still finishes both (shielded, for up to BULK_SEND_GRACE),
        since a frame cut short puts the socket out of step and one without its line leaves
        the agent holding a frame nobody claims."""
        async with bulk.send_lock:
            outgoing["bulk"] = True
            line = self._request_line(outgoing, request_id, True)
            channel = int(outgoing["channel"])
            sent = False
            with trio.CancelScope(shield=True) as whole:
                whole.deadline = trio.current_time() + BULK_SEND_GRACE
                try:
                    await bulk.send_frame(channel, payload)
                    sent = True
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.info("%s: the bulk socket broke sending a frame: %s", self._name, exc)
                if sent:
                    await self._outgoing_send.send(line)
                    return line
            if not sent or whole.cancelled_caught:
                with trio.CancelScope(shield=True):
                    await self._lose_bulk(bulk)
            if sent:  # the line could not be queued in time: its frame is nobody's
                raise trio.BrokenResourceError("the request line could not be sent")
        del outgoing["bulk"]
        line = encode_frame(channel, FrameKind.DATA, payload) + encode(outgoing)
        await self._outgoing_send.send(line)
        return line

    async def cancel(self, request_id: int | str) -> None:
        """Ask the agent to cancel one of this link's requests (its answer is not awaited)."""
        await self.send_internal({"type": "cancel", "target": request_id})

    async def send_internal(self, message: Message) -> None:
        """A message for the agent that needs no answer routed anywhere (credit, cancel)."""
        if self.closed.is_set():
            return
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._outgoing_send.send(encode({**message, "id": next(self._ids)}))

    def send_internal_nowait(self, message: Message) -> bool:
        """Queue an internal message now, ahead of anything sent later; False if the queue
        is full or the link closed."""
        if self.closed.is_set():
            return False
        try:
            self._outgoing_send.send_nowait(encode({**message, "id": next(self._ids)}))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def call(self, message: Message) -> Message:
        """Send a request and return its final message (a response or an `error`)."""
        async with self.request(message) as pending:
            async for reply in pending:
                if is_final(reply.message):
                    return reply.message
        return self.missing_reply(message.get("id"))

    def missing_reply(self, request_id: Any) -> Message:
        """The error for a request whose messages ended without a final one."""
        if self.closed.is_set():
            return error_message(request_id, ErrorCode.AGENT_GONE, self.close_reason)
        return error_message(
            request_id, ErrorCode.BUSY, "the request fell too far behind the agent's output"
        )
