"""E2B's code interpreter API (port 49999 of a sandbox, as `e2b-code-interpreter` calls it)
on Insien's code contexts: the same agent requests Insien's own `run_code` uses, so one
implementation serves both fronts. `POST /execute` streams newline-delimited JSON events
(`stdout`, `stderr`, `result`, `error`, `number_of_executions`); `/contexts` creates, lists,
removes and restarts contexts."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import trio

from ... import untrusted_json
from ...link import AgentGone
from ...protocol import Message
from ...sandboxes.access import Admission
from ..exchange import BodyTooLarge, ClientGone, Exchange

MAX_BODY = 16 * 1024 * 1024
LANGUAGES = {"python": "python", "js": "javascript", "javascript": "javascript"}
CONTEXT = re.compile(r"^/contexts/(?P<id>[^/]+)(?P<restart>/restart)?$")
STATUS = {
    "NOT_FOUND": 404,
    "BAD_REQUEST": 400,
    "CONTEXT_DIED": 500,
    "AGENT_GONE": 502,
    "BUSY": 503,
}


class InterpreterError(Exception):
    """An answer other than 200, in the shape the SDK reads (its text is the message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def serve_interpreter(exchange: Exchange, admission: Admission) -> None:
    try:
        await _route(exchange, admission)
    except InterpreterError as exc:
        if not exchange.started:
            await exchange.discard_body()
            await exchange.respond(exc.status, exc.message.encode(), "text/plain; charset=utf-8")
    except (AgentGone, ClientGone):
        if not exchange.started:
            await exchange.respond(502, b"the sandbox is gone", "text/plain; charset=utf-8")


async def _route(exchange: Exchange, admission: Admission) -> None:
    path, method = exchange.path, exchange.method
    if path == "/health":
        await exchange.respond(200, b"OK", "text/plain")
    elif path == "/execute" and method == "POST":
        await _execute(exchange, admission, await _json(exchange))
    elif path == "/contexts" and method == "POST":
        body = await _json(exchange)
        message: Message = {"type": "createContext", "language": _language(body.get("language"))}
        if isinstance(body.get("cwd"), str):
            message["cwd"] = _os_text(body["cwd"], "cwd")
        await exchange.respond_json(200, (await _call(admission, message))["context"])
    elif path == "/contexts" and method == "GET":
        await exchange.respond_json(
            200, (await _call(admission, {"type": "listContexts"}))["contexts"]
        )
    elif (match := CONTEXT.match(path)) is not None:
        context = match.group("id")
        if match.group("restart") and method == "POST":
            await _call(admission, {"type": "restartContext", "context": context})
            await exchange.respond(204, b"", "text/plain")
        elif not match.group("restart") and method == "DELETE":
            await _call(admission, {"type": "removeContext", "context": context})
            await exchange.respond(204, b"", "text/plain")
        else:
            raise InterpreterError(405, f"{method} {path} is not a route of the interpreter")
    else:
        raise InterpreterError(404, f"the code interpreter has no route {method} {path}")


async def _json(exchange: Exchange) -> dict[str, Any]:
    """The request's JSON object, through the bounded decoder: a nesting bomb is a 400 with
    its reason, like any other body that is not JSON."""
    try:
        raw = await exchange.read_body(MAX_BODY)
        body = untrusted_json.loads(raw or b"{}", max_bytes=MAX_BODY)
    except BodyTooLarge as exc:
        raise InterpreterError(413, str(exc)) from None
    except untrusted_json.JsonRefused as exc:
        raise InterpreterError(400, str(exc)) from None
    if not isinstance(body, dict):
        raise InterpreterError(400, "the body is not a JSON object")
    return body


def _os_text(value: str, field: str) -> str:
    """A path or variable for the sandbox's processes: a NUL byte is refused here, not
    handed to the agent (its kernel could not take it)."""
    if "\x00" in value:
        raise InterpreterError(400, f"{field} must not contain a NUL byte")
    return value


def _language(value: object) -> str:
    if value is None:
        return "python"
    language = LANGUAGES.get(str(value).lower())
    if language is None:
        raise InterpreterError(400, f"language {value!r} is not available: python or js")
    return language


def _refusal(answer: Message) -> InterpreterError:
    code = str(answer.get("code"))
    return InterpreterError(STATUS.get(code, 500), f"{code}: {answer.get('message')}")


async def _call(admission: Admission, message: Message) -> Message:
    answer = await admission.link.call(message)
    if answer.get("type") == "error":
        raise _refusal(answer)
    admission.active()
    return answer


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _event(reply: Message) -> list[dict[str, Any]]:
    """What E2B's SDK reads for one of the agent's events (its final one included)."""
    kind = reply.get("type")
    if kind == "codeOutput":
        stream = "stderr" if reply.get("stream") == "stderr" else "stdout"
        return [{"type": stream, "text": reply.get("text", ""), "timestamp": _now()}]
    if kind == "codeResult":
        result = dict(reply.get("result") or {})
        result["is_main_result"] = bool(result.pop("isMainResult", False))
        return [{"type": "result", **result}]
    if kind == "error":
        name, message = str(reply.get("code")), str(reply.get("message"))
        return [{"type": "error", "name": name, "value": message, "traceback": message}]
    events: list[dict[str, Any]] = []
    error = reply.get("error")
    if isinstance(error, dict):
        events.append(
            {"type": "error", **{k: str(error.get(k, "")) for k in ("name", "value", "traceback")}}
        )
    events.append({"type": "number_of_executions", "execution_count": reply.get("executionCount")})
    return events


async def _execute(exchange: Exchange, admission: Admission, body: dict[str, Any]) -> None:
    code = body.get("code")
    if not isinstance(code, str):
        raise InterpreterError(400, "field 'code' must be a string")
    message: Message = {"type": "runCode", "code": code}
    context = body.get("context_id")
    if isinstance(context, str) and context:
        message["context"] = context
    else:
        message["language"] = _language(body.get("language"))
    envs = body.get("env_vars")
    if isinstance(envs, dict):
        message["envs"] = {
            _os_text(str(k), "env_vars"): _os_text(str(v), "env_vars") for k, v in envs.items()
        }
    failure: InterpreterError | AgentGone | ClientGone | None = None
    async with trio.open_nursery() as nursery:

        async def gone() -> None:
            # The SDK ends its timeout by dropping the connection: the cell is interrupted.
            await exchange.wait_disconnect()
            nursery.cancel_scope.cancel()

        nursery.start_soon(gone)
        try:
            await _stream(exchange, admission, message)
        except (InterpreterError, AgentGone, ClientGone) as exc:
            failure = exc  # raised past the nursery, not wrapped in its exception group
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _stream(exchange: Exchange, admission: Admission, message: Message) -> None:
    """The cell's events as NDJSON lines; a refusal before the first is an HTTP status, and
    an agent that ends without a final message ends the stream with an error line."""
    final: Message | None = None
    async with admission.link.request(message) as pending:
        async for reply in pending:
            if reply.message.get("type") not in ("codeOutput", "codeResult"):
                final = reply.message
            if not exchange.started:
                if final is not None and final.get("type") == "error":
                    raise _refusal(final)
                await exchange.start(200, "application/x-ndjson")
            lines = b"".join(json.dumps(e).encode() + b"\n" for e in _event(reply.message))
            await exchange.write(lines)
            admission.active()
            if final is not None:
                break
    if final is None:
        missing = admission.link.missing_reply(message.get("id"))
        if not exchange.started:
            raise _refusal(missing)
        await exchange.write(b"".join(json.dumps(e).encode() + b"\n" for e in _event(missing)))
    await exchange.write(b"", more=False)
