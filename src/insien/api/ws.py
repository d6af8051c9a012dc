"""The client WebSocket at `agentUrl`: authenticate, then relay RPC to the sandbox's agent.

Each connection runs a nursery with one reader (this handler), one writer task that alone
sends on the socket, and a task per request in flight. Replies carry the client's own ids;
the link keeps agent-side ids unique, so clients sharing a sandbox never see each other's answers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from quart import Blueprint, websocket

from .. import untrusted_json
from ..link import AgentGone, AgentLink, PendingRequest, Reply
from ..link.budget import CONNECTION_COPIES, ByteBudget, Reservation, read_answer_bytes
from ..link.sessions import resume, session_agent_id
from ..protocol import (
    ErrorCode,
    Message,
    ProtocolError,
    error_message,
    is_final,
    parse_request,
)
from ..sandboxes.access import Admission, Credentials, Surface, Unauthenticated
from ..sandboxes.manager import SandboxNotFound
from ..sandboxes.sandbox import State
from ..tenancy.quotas import QuotaExceeded
from .context import Services
from .errors import answer_for, error_response
from .openapi import operation

log = logging.getLogger("insien.ws")

SEND_QUEUE = 4
SESSION_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""Messages waiting for a slow client before request tasks block (back-pressure)."""
CLOSE_GOING_AWAY = 1001
CLOSE_SERVICE_RESTART = 1012
CLOSE_POLICY_VIOLATION = 1008
REVOCATION_CHECK_SECONDS = 0.25
ENDED_WAIT = 5.0
"""How long a connection whose agent went away waits to learn why, for its `sandboxEnded`."""


def ws_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("ws", __name__)

    @bp.websocket("/agent/<sandbox_id>")
    @operation(
        summary="The sandbox's RPC WebSocket (agentUrl)",
        description=(
            "Authenticated by the `token` of `agentUrl` or `X-API-Key`; `session` (8 to 64 of "
            "A-Z a-z 0-9 _ -) resumes a session after a reconnect. The messages are "
            "docs/protocol.md."
        ),
        answer="websocket",
        errors=(400, 404, 429),
        tag="rpc",
    )
    async def agent_socket(sandbox_id: str) -> Any:
        auth = services.auth
        credentials = Credentials(
            key=websocket.headers.get("X-API-Key"), control_token=websocket.args.get("token")
        )
        try:
            admission = services.gate.admit(sandbox_id, credentials, Surface.CONTROL)
        except Unauthenticated:
            return error_response(
                401, ErrorCode.UNAUTHORIZED, "a valid token or X-API-Key header is required"
            )
        except SandboxNotFound as exc:
            return answer_for(exc)
        sandbox, tenant = admission.sandbox, admission.tenant
        assert tenant is not None  # a control surface admits no public traffic
        session = websocket.args.get("session")
        if session is not None and not SESSION_PATTERN.fullmatch(session):
            return error_response(
                400, ErrorCode.BAD_REQUEST, "session must be 8 to 64 of A-Z a-z 0-9 _ -"
            )
        metrics = services.manager.metrics
        try:
            held = services.gate.hold_connection(
                tenant, buffer=(services.settings.connection_buffer_bytes, CONNECTION_COPIES)
            )
        except QuotaExceeded as exc:
            return answer_for(exc)
        with held:
            await websocket.accept()
            metrics.websockets.inc()
            sandbox.clients += 1
            try:
                await ClientSession(
                    admission,
                    services.settings.max_requests_per_connection,
                    session,
                    held.budget,
                    authorised=lambda: auth.still_valid(tenant),
                    max_read=services.settings.max_read_bytes,
                ).run()
            finally:
                metrics.websockets.dec()
                sandbox.clients -= 1
                admission.active()
        return None

    return bp


@dataclass
class InFlight:
    """A client request being relayed; `pid` is known for spawn (once started) and attach."""

    kind: str
    pid: int | None = None
    pending: PendingRequest | None = None


class ClientSession:
    """One client connection to one sandbox."""

    def __init__(
        self,
        admission: Admission,
        max_in_flight: int,
        session: str | None = None,
        budget: ByteBudget | None = None,
        authorised: Callable[[], bool] | None = None,
        max_read: int = 16 * 1024 * 1024,
    ) -> None:
        """`authorised` says whether the caller's key still opens this sandbox; checked
        several times a second, a revoked key or removed tenant closes the connection.
        `max_read` is the most a `read` answers (INSIEN_MAX_READ_BYTES), what it reserves."""
        self._admission = admission
        self._sandbox = admission.sandbox
        self._session = session
        self._link: AgentLink = admission.link
        self._max_in_flight = max_in_flight
        self._in_flight: dict[Any, InFlight] = {}
        self._budget = budget
        self._authorised = authorised
        self._max_read = max_read
        self._revoked = False
        # (message, bytes charged to the budget): the writer releases them once sent. Bytes
        # go as a binary message: a frame's description line and its raw bytes.
        self._send, self._outgoing = trio.open_memory_channel[tuple[Message | str | bytes, int]](
            SEND_QUEUE
        )

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop, nursery)
            async with self._send, trio.open_nursery() as requests:
                if self._session is not None:
                    await self._resume_session(self._session, requests)
                with trio.CancelScope() as reading:
                    nursery.start_soon(self._stop_reading_when_sandbox_ends, reading)
                    if self._authorised is not None:
                        nursery.start_soon(self._stop_when_revoked, reading, requests)
                    await self._read_loop(requests)
                # Every request has answered (AGENT_GONE if the sandbox ended under it);
                # closing the channel lets the writer flush those answers and finish.

    async def _resume_session(self, session: str, nursery: trio.Nursery) -> None:
        """Hand this connection what its session left behind: answers that arrived with nobody
        connected (a restart, a dropped connection), then a `resumed` event naming the requests
        still running, whose messages follow as they come."""
        resumed = resume(self._link, session, self._budget)
        for answer in resumed.answers:
            await self._send.send((answer, 0))
        for client_id, pending in resumed.running.items():
            self._in_flight[client_id] = InFlight("resumed", pending=pending)
        await self._send.send((resumed.event, 0))
        for client_id in resumed.running:
            nursery.start_soon(self._relay_adopted, client_id)

    async def _relay_adopted(self, client_id: Any) -> None:
        in_flight = self._in_flight[client_id]
        assert in_flight.pending is not None
        try:
            await self._relay(client_id, in_flight, in_flight.pending)
        finally:
            await self._link.release(in_flight.pending)
            del self._in_flight[client_id]

    async def _stop_when_revoked(self, reading: trio.CancelScope, requests: trio.Nursery) -> None:
        assert self._authorised is not None
        while self._authorised():  # noqa: ASYNC110 (polling a file-backed check)
            await trio.sleep(REVOCATION_CHECK_SECONDS)
        log.info("closing a connection to sandbox %s: its key was revoked", self._sandbox.id)
        self._revoked = True
        reading.cancel()
        requests.cancel_scope.cancel()  # their requests are cancelled in the sandbox too

    async def _write_loop(self, nursery: trio.Nursery) -> None:
        try:
            async for message, charge in self._outgoing:
                if isinstance(message, dict):
                    message = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
                # Sending makes a second copy (the frame, held until the socket has taken all
                # of it, which a client that does not read never lets happen): the budget
                # counts it (`CONNECTION_COPIES`), so the charge is released once sent.
                try:
                    await websocket.send(message)
                finally:
                    self._release(charge)
                del message  # not held while waiting for the next one
        finally:
            self._drain_outgoing()
        try:
            await self._close(nursery)
        finally:
            # Every other task of the connection waits on something that may never come now.
            nursery.cancel_scope.cancel()

    async def _close(self, nursery: trio.Nursery) -> None:
        """Close the socket with the code that says why the connection ends."""
        if (
            self._link.closed.is_set()
            and not self._link.detached
            and self._sandbox.state is State.RUNNING
        ):
            # An agent that went away closes the link first; the manager marks the sandbox
            # ended once the runtime has said why (an inspect), which the close must name.
            with trio.move_on_after(ENDED_WAIT):
                await self._sandbox.ended.wait()
        if self._revoked:
            await websocket.close(CLOSE_POLICY_VIOLATION, "the API key was revoked")
        elif self._link.detached:
            # The server is restarting and the sandbox lives on: reconnect to it later.
            await websocket.close(CLOSE_SERVICE_RESTART, "server restarting")
        elif self._sandbox.ended.is_set():
            sandbox = self._sandbox
            ended = {
                "type": "sandboxEnded",
                "sandboxId": sandbox.id,
                "reason": str(sandbox.end_reason),
                "detail": sandbox.end_detail,
            }
            with trio.move_on_after(1):  # a client that does not read gets the close anyway
                await websocket.send(json.dumps(ended))
            reason = sandbox.close_message
            # A close reason must fit in a control frame: 123 bytes.
            await websocket.close(CLOSE_GOING_AWAY, reason.encode()[:120].decode(errors="ignore"))

    def _release(self, charge: int) -> None:
        if self._budget is not None:
            self._budget.release(charge)

    def _drain_outgoing(self) -> None:
        """The connection is done: release what queued messages were charged, then close."""
        while True:
            try:
                _, charge = self._outgoing.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            self._release(charge)
        self._outgoing.close()

    async def _stop_reading_when_sandbox_ends(self, reading: trio.CancelScope) -> None:
        await self._link.closed.wait()  # the sandbox ended, or the server let go of it
        reading.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            data = await websocket.receive()
            self._admission.active()
            try:
                message = self._admit(data)
                if message["type"] == "cancel":
                    await self._send.send((await self._cancel(message), 0))
                elif message["type"] == "detach":
                    await self._send.send((await self._detach(message), 0))
                else:
                    self._in_flight[message["id"]] = InFlight(message["type"], message.get("pid"))
                    nursery.start_soon(self._forward, message)
            except ProtocolError as exc:
                await self._send.send((exc.to_message(), 0))

    def _admit(self, data: str | bytes | None) -> Message:
        try:
            # Quart hands over an empty binary frame as None; hypercorn bounds a frame's size.
            raw = untrusted_json.loads(data or "", max_bytes=None)
        except untrusted_json.JsonRefused as exc:  # not JSON, or a nesting bomb
            raise ProtocolError(None, ErrorCode.BAD_REQUEST, f"message refused: {exc}") from None
        message = parse_request(raw)
        request_id = message["id"]
        if request_id in self._in_flight:
            raise ProtocolError(
                request_id, ErrorCode.BAD_REQUEST, f"id {request_id!r} is already in flight"
            )
        if len(self._in_flight) >= self._max_in_flight:
            raise ProtocolError(
                request_id,
                ErrorCode.BUSY,
                f"at most {self._max_in_flight} requests may be in flight per connection",
            )
        return message

    async def _cancel(self, message: Message) -> Message:
        """Cancel one of this client's own requests, named by the client's id for it."""
        target = self._in_flight.get(message["target"])
        if target is not None and target.pending is not None:
            await target.pending.cancel()
        return {
            "id": message["id"],
            "type": "cancelResponse",
            "target": message["target"],
            "cancelled": target is not None,
        }

    async def _detach(self, message: Message) -> Message:
        """Stop following a process: ends this client's spawn and attach requests for it."""
        pid = message["pid"]
        following = [
            request
            for request in self._in_flight.values()
            if request.kind in ("spawn", "attach") and request.pid == pid and request.pending
        ]
        for request in following:
            assert request.pending is not None
            await request.pending.cancel()
        return {
            "id": message["id"],
            "type": "detachResponse",
            "pid": pid,
            "detached": len(following),
        }

    async def _relay(self, client_id: Any, in_flight: InFlight, pending: PendingRequest) -> None:
        async for reply in pending:
            if reply.message.get("type") == "spawnResponse":
                in_flight.pid = reply.message.get("pid")
            final, charge = is_final(reply.message), reply.charge
            try:
                outgoing = reply.to_client(client_id)
            except BaseException:
                pending.release(reply)
                raise
            # Only what the client gets waits for the writer: the agent's line and the message
            # parsed from it (as large again, uncharged) go now, not once the client reads.
            del reply
            await self._send_charged(outgoing, charge, pending)
            del outgoing  # the writer releases it once sent; not held here until the next
            if final:
                return
        if not self._link.detached:  # a detached request carries on in the sandbox
            await self._send.send((self._link.missing_reply(client_id), 0))

    async def _send_charged(
        self, outgoing: str | bytes, charge: int, pending: PendingRequest
    ) -> None:
        """Queue a reply for the writer, which releases its charge once it is sent."""
        try:
            await self._send.send((outgoing, charge))
        except BaseException:
            pending.release(Reply({}, b"", charge))
            raise

    async def _forward(self, message: Message) -> None:
        client_id = message["id"]
        in_flight = self._in_flight[client_id]
        agent_id = None if self._session is None else session_agent_id(self._session, client_id)
        binary = bool(message.pop("binary", False))
        budget = self._budget
        reservation: Reservation | None = None
        try:
            if budget is not None and message["type"] == "read":
                budget = reservation = await self._reserve(message, binary, budget)
            async with self._link.request(message, agent_id, budget, binary=binary) as pending:
                in_flight.pending = pending
                await self._relay(client_id, in_flight, pending)
        except AgentGone as exc:
            if not self._link.detached:
                message = error_message(client_id, ErrorCode.AGENT_GONE, str(exc))
                await self._send.send((message, 0))
        except ProtocolError as exc:
            await self._send.send((exc.to_message(), 0))
        finally:
            if reservation is not None:
                reservation.settle()
            del self._in_flight[client_id]

    async def _reserve(self, message: Message, binary: bool, budget: ByteBudget) -> Reservation:
        """Set aside what a `read` can answer before the agent is asked, or refuse it BUSY.

        The most any read can answer is tried first (no round trip); when that does not fit,
        the file's size decides. Bytes counted only once they arrived would already be held:
        read whole from the agent and parsed, for every sandbox at once."""
        request = {**message, "binary": binary}
        reservation = budget.reserve(read_answer_bytes(request, self._max_read))
        if reservation is None:
            size = await self._file_size(message["path"])
            reservation = budget.reserve(read_answer_bytes(request, self._max_read, size))
        if reservation is None:
            raise ProtocolError(
                message["id"],
                ErrorCode.BUSY,
                "too many bytes are waiting for this connection to read them",
            )
        return reservation

    async def _file_size(self, path: str) -> int:
        """A file's size as the agent sees it; 0 for what a read would refuse (missing, not a
        file: its answer is an error) and for a symlink (charged as it comes, if larger)."""
        answer = await self._link.call({"type": "stat", "path": path})
        entry = answer.get("entry")
        if answer.get("type") != "statResponse" or not isinstance(entry, dict):
            return 0
        size = entry.get("size")
        return size if entry.get("type") == "file" and isinstance(size, int) else 0
