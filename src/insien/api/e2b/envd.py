"""The sandbox side of the E2B front: what E2B's SDKs send to envd (port 49983) reaches the
sandbox's agent through Insien's link, with no server inside the sandbox.

A request is authenticated by the sandbox's access token (`X-Access-Token`, returned by the
create) or an API key, must name a sandbox of that tenant, and then is one of: `GET /health`,
`/files`, or a Connect method of `process.Process` / `filesystem.Filesystem`. A stream gets
one writer task that also sends envd's keepalives, and ends when the client goes away.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from contextlib import aclosing

import trio

from ...link import AgentGone
from ...sandboxes.access import Admission, Credentials, StillPaused, Surface, Unauthenticated
from ...sandboxes.manager import SandboxNotFound
from ...sandboxes.root import ROOT_REFUSED, sandbox_root_allowed
from ...sandboxes.sandbox import State
from ...tenancy.auth import Audience
from ..context import Services
from ..exchange import BodyTooLarge, ClientGone, Exchange
from ..signed_urls import BadSignature, SignedRequest, signed_request
from . import connect
from .calls import EnvdCall, Method
from .connect import Code, ConnectError
from .files import FilesError, serve_files
from .filesystem import METHODS as FILESYSTEM_METHODS
from .interpreter import serve_interpreter
from .process import METHODS as PROCESS_METHODS
from .watchers import PolledWatches
from .watchers import methods as watcher_methods

log = logging.getLogger(__name__)

ENVD_PORT = 49983
INTERPRETER_PORT = 49999
SANDBOX_USER = "user"
STREAM_QUEUE = 8
"""Messages a stream's handler may be ahead of its writer (each at most ~1.4 MiB)."""
DEFAULT_KEEPALIVE = 50.0
MIN_KEEPALIVE = 1.0


class Refused(Exception):
    """An answer before any method runs: the status, the Connect code, the message."""

    def __init__(self, status: int, code: Code, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _user(header: str | None) -> str | None:
    """The user named by envd's `Authorization: Basic <user:>` header, if any."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Refused(400, Code.INVALID_ARGUMENT, "malformed Authorization header") from None
    return decoded.split(":", 1)[0] or None


def _gone(admission: Admission) -> bool:
    """The sandbox ended, or its agent's link closed for good (it is ending)."""
    return admission.sandbox.state is State.ENDED or admission.link.closed.is_set()


class EnvdFront:
    """Serves envd's API for every sandbox, addressed by sandbox id and port."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.watches = PolledWatches(services.background)
        self.methods: dict[str, Method] = {
            **PROCESS_METHODS,
            **FILESYSTEM_METHODS,
            **watcher_methods(self.watches),
        }

    async def serve(self, exchange: Exchange, sandbox_id: str, port: int) -> None:
        rpc = exchange.path.startswith(("/process.Process/", "/filesystem.Filesystem/"))
        try:
            if port == INTERPRETER_PORT:
                admission = self._admit_interpreter(exchange, sandbox_id)
                await self._awake(admission)
                await serve_interpreter(exchange, admission)
                return
            signed = self._signed(exchange)
            if signed is not None:
                admission = self._admit_signed(exchange, sandbox_id, port, signed)
                await self._awake(admission)
                limit = self.services.settings.max_upload_bytes
                await serve_files(exchange, admission, limit, only=signed.path)
                return
            admission = self._admit(exchange, sandbox_id, port)
            root = self._as_root(
                admission,
                _user(exchange.headers.get("authorization")),
                files=exchange.path == "/files" or exchange.path.startswith("/filesystem."),
            )
            if exchange.path == "/files":  # envd's uploads and downloads name it in the query
                self._as_root(admission, exchange.query.get("username") or None, files=True)
            await self._awake(admission)
            if exchange.path == "/health":
                await exchange.discard_body()
                if _gone(admission):  # ending: what E2B's proxy says of a sandbox it lost
                    raise Refused(502, Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
                await exchange.respond(204, b"", "text/plain")
            elif exchange.path == "/files":
                await serve_files(exchange, admission, self.services.settings.max_upload_bytes)
            elif rpc:
                await self._rpc(exchange, admission, root)
            else:
                raise Refused(404, Code.NOT_FOUND, f"envd has no route {exchange.path}")
        except Refused as exc:
            await self._refuse(exchange, rpc, exc.status, exc.code, exc.message)
        except FilesError as exc:
            await self._refuse(exchange, False, exc.status, Code.UNKNOWN, exc.message)
        except ConnectError as exc:  # a unary call's failure
            await self._refuse(exchange, True, connect.HTTP_STATUS[exc.code], exc.code, exc.message)

    def _admit_interpreter(self, exchange: Exchange, sandbox_id: str) -> Admission:
        """The code interpreter's port: running code needs the sandbox's control credential
        (its access token or the key); managing contexts, which E2B's SDKs call with only the
        traffic token, takes that too. Public traffic opens neither (access.py)."""
        surface = Surface.CONTROL if exchange.path == "/execute" else Surface.CONTEXTS
        return self._admission(exchange, sandbox_id, surface)

    async def _awake(self, admission: Admission) -> None:
        """A paused sandbox answers only once it runs again (Gate.awaken), else 502."""
        try:
            await self.services.gate.awaken(admission)
        except StillPaused as exc:
            raise Refused(502, Code.UNAVAILABLE, str(exc)) from None

    def _signed(self, exchange: Exchange) -> SignedRequest | None:
        """The signed `/files` request this is (E2B's signed URLs), if it carries a signature."""
        if exchange.path != "/files":
            return None
        try:
            return signed_request(exchange.method, exchange.query, time.time())
        except BadSignature as exc:
            raise Refused(401, Code.UNAUTHENTICATED, str(exc)) from None

    def _admit_signed(
        self, exchange: Exchange, sandbox_id: str, port: int, signed: SignedRequest
    ) -> Admission:
        """A signed URL is a credential for one path, one operation and one user of one
        sandbox: checked here against the envd tokens handed out for that sandbox (each must
        still be a valid token of its owner), then admitted as that owner. The caller serves
        exactly that (`/files`, the operation, only that path). A URL with a bad signature is
        refused whatever else the request carries."""
        if port != ENVD_PORT:
            raise Refused(401, Code.UNAUTHENTICATED, "a signed URL is for envd's /files")
        if not sandbox_id:  # a URL that names no sandbox (router.py): its signature says which
            sandbox_id = self.services.envd_tokens.signer(signed) or ""
            if not sandbox_id:
                raise Refused(401, Code.UNAUTHENTICATED, "invalid signature")
        auth = self.services.auth
        owner = None
        for token in self.services.envd_tokens.of(sandbox_id):
            tenant = auth.tenant_for_token(token, sandbox_id, Audience.CONTROL)
            if tenant is not None and signed.signed_with(token):
                owner = tenant
                break
        if owner is None:
            raise Refused(401, Code.UNAUTHENTICATED, "invalid signature")
        try:
            admission = self.services.gate.for_tenant(sandbox_id, owner)
        except SandboxNotFound:
            raise Refused(
                502, Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found"
            ) from None
        self._as_root(admission, signed.user or None, files=True)
        self._as_root(admission, _user(exchange.headers.get("authorization")), files=True)
        return admission

    def _as_root(self, admission: Admission, user: str | None, *, files: bool) -> bool:
        """Whether the call runs as root (E2B's `user="root"`), or the 403 saying why not:
        root only where it is unprivileged outside (sandboxes/root.py), for commands only."""
        if user is None or user == SANDBOX_USER:
            return False
        if user != "root":
            raise Refused(
                403,
                Code.PERMISSION_DENIED,
                f"user {user!r} is not available: commands and files run as {SANDBOX_USER!r}"
                " (uid 1000), or as root where the sandbox allows it",
            )
        if not sandbox_root_allowed(admission.sandbox, self.services.manager.runtime):
            raise Refused(403, Code.PERMISSION_DENIED, ROOT_REFUSED)
        if files:
            raise Refused(
                403,
                Code.PERMISSION_DENIED,
                "files as root are not supported: file requests act as 'user' (uid 1000);"
                " write as 'user' and move the file with a command run as root"
                " (user='root' runs it through sudo in this sandbox)",
            )
        return True

    def _admission(self, exchange: Exchange, sandbox_id: str, surface: Surface) -> Admission:
        headers = exchange.headers
        credentials = Credentials(
            key=headers.get("x-api-key"),
            control_token=headers.get("x-access-token"),
            traffic_token=headers.get("e2b-traffic-access-token"),
        )
        try:
            return self.services.gate.admit(sandbox_id, credentials, surface)
        except Unauthenticated:
            raise Refused(401, Code.UNAUTHENTICATED, "a valid X-Access-Token is required") from None
        except SandboxNotFound:
            raise Refused(
                502, Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found"
            ) from None

    def _admit(self, exchange: Exchange, sandbox_id: str, port: int) -> Admission:
        admission = self._admission(exchange, sandbox_id, Surface.CONTROL)
        if port != ENVD_PORT:
            raise Refused(
                502, Code.UNAVAILABLE, f"port {port} is not open: Insien does not forward ports yet"
            )
        return admission

    async def _refuse(
        self, exchange: Exchange, rpc: bool, status: int, code: Code, message: str
    ) -> None:
        if exchange.started:
            return  # the status line is out; the cut body is all the client will see
        whole = await exchange.discard_body()
        headers = [] if whole else [("connection", "close")]
        if rpc:
            await exchange.respond_json(status, {"code": str(code), "message": message}, headers)
        else:
            await exchange.respond_json(status, {"code": status, "message": message}, headers)

    async def _rpc(self, exchange: Exchange, admission: Admission, root: bool) -> None:
        method = self.methods.get(exchange.path)
        if method is None:
            raise Refused(404, Code.UNIMPLEMENTED, f"no method {exchange.path}")
        if exchange.method != "POST":
            raise Refused(405, Code.UNIMPLEMENTED, "Connect calls are POST requests")
        content_type = exchange.headers.get("content-type", "")
        deadline = connect.timeout_seconds(exchange.headers.get("connect-timeout-ms")) or None
        if method.client_stream is not None:
            if not connect.is_stream_type(content_type):
                raise Refused(415, Code.INVALID_ARGUMENT, f"expected {connect.STREAM_TYPE}")
            await self._client_stream(exchange, EnvdCall(admission, {}, deadline, root), method)
            return
        try:
            body = await exchange.read_body(connect.MAX_REQUEST_BYTES)
        except BodyTooLarge as exc:
            raise Refused(413, Code.RESOURCE_EXHAUSTED, str(exc)) from None
        except ClientGone:
            return
        if method.stream is not None:
            if not connect.is_stream_type(content_type):
                raise Refused(415, Code.INVALID_ARGUMENT, f"expected {connect.STREAM_TYPE}")
            message = connect.parse_stream_request(body)
            call = EnvdCall(admission, message, deadline, root)
            await self._stream(exchange, call, method)
            return
        assert method.unary is not None
        if not connect.is_unary_type(content_type):
            raise Refused(415, Code.INVALID_ARGUMENT, f"expected {connect.UNARY_TYPE}")
        call = EnvdCall(admission, connect.parse_unary(body), deadline, root)
        with call.within_deadline():
            result = await method.unary(call)
        await exchange.respond_json(200, result)

    async def _client_stream(self, exchange: Exchange, call: EnvdCall, method: Method) -> None:
        """The request's messages as they arrive, then one answer and the end of the stream."""
        assert method.client_stream is not None
        answer = b""
        error: ConnectError | None = None
        try:
            with call.within_deadline():
                async with aclosing(connect.read_stream(exchange.chunks())) as messages:
                    result = await method.client_stream(call, messages)
                answer = connect.envelope(result)
        except ConnectError as exc:
            error = exc
        except AgentGone as exc:
            error = call.gone(exc)
        except ClientGone:
            return
        if error is not None:
            await exchange.discard_body()
            answer = b""
        await exchange.respond(200, answer + connect.end_stream(error), connect.STREAM_TYPE)

    async def _stream(self, exchange: Exchange, call: EnvdCall, method: Method) -> None:
        assert method.stream is not None
        handler = method.stream
        interval = DEFAULT_KEEPALIVE
        asked = exchange.headers.get("keepalive-ping-interval", "")
        if asked.isdigit():
            interval = max(MIN_KEEPALIVE, float(asked))
        send, receive = trio.open_memory_channel[bytes](STREAM_QUEUE)

        async def emit(message: dict[str, object]) -> None:
            await send.send(connect.envelope(message))

        # The sandbox went away under the stream: as E2B's proxy does, the connection is
        # dropped with no end-of-stream message, so the SDKs probe /health (502) and say the
        # sandbox was killed. Only over HTTP/1.1: hypercorn cannot reset an HTTP/2 stream
        # from the app, and a stream left open there would hang the client instead.
        cut = False

        async def produce() -> None:
            nonlocal cut
            error: ConnectError | None = None
            async with send:
                try:
                    with call.within_deadline():
                        await handler(call, emit)
                except ConnectError as exc:
                    error = exc
                except AgentGone as exc:
                    error = call.gone(exc)
                except Exception as exc:
                    log.exception("envd stream %s failed", exchange.path)
                    error = ConnectError(Code.INTERNAL, f"{type(exc).__name__}: {exc}")
                if error is not None and _gone(call.admission):
                    cut = exchange.scope.get("http_version") in ("1.0", "1.1")
                if not cut:
                    await send.send(connect.end_stream(error))

        async def watch_client(scope: trio.CancelScope) -> None:
            await exchange.wait_disconnect()
            scope.cancel()  # closing the stream stops following, not the command

        await exchange.start(200, connect.STREAM_TYPE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client, nursery.cancel_scope)
            nursery.start_soon(produce)
            async with receive:
                while True:
                    with trio.move_on_after(interval) as idle:
                        try:
                            data = await receive.receive()
                        except trio.EndOfChannel:
                            break
                    if idle.cancelled_caught:
                        data = connect.envelope(method.keepalive or {})
                    await exchange.write(data)
            if not cut:  # cut: the response ends without its last chunk, closing the connection
                await exchange.write(b"", more=False)
            nursery.cancel_scope.cancel()
