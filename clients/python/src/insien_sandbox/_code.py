"""Code contexts and cells: `run_code` keeps variables between calls, like a notebook.

A context is a long-lived Python process in the sandbox (the agent's kernel); each language
has a default context, and `create_code_context` makes more that share nothing. A cell streams
its stdout and stderr as it runs and gives results (its last expression, and every
`display(...)`) with every format the object offers: text, html, markdown, png, jpeg, svg,
json, latex.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from ._commands import OutputCallback, _notify
from ._rpc import check, is_final
from ._session import Session

FORMATS = ("text", "html", "markdown", "png", "jpeg", "svg", "json", "latex")


@dataclass(frozen=True)
class Result:
    """One result of a cell: `is_main_result` for its last expression; each format present
    where the object provides it (`png`/`jpeg` base64)."""

    is_main_result: bool
    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    png: str | None = None
    jpeg: str | None = None
    svg: str | None = None
    json: Any = None
    latex: str | None = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Result:
        return cls(
            is_main_result=bool(raw.get("isMainResult")),
            **{name: raw.get(name) for name in FORMATS},
        )

    def formats(self) -> builtins.list[str]:
        """The formats this result has."""
        return [name for name in FORMATS if getattr(self, name) is not None]


@dataclass(frozen=True)
class ExecutionError:
    """What a cell raised: the exception's type name, its message and the traceback."""

    name: str
    value: str
    traceback: str


@dataclass
class Logs:
    stdout: builtins.list[str] = field(default_factory=list)
    stderr: builtins.list[str] = field(default_factory=list)


@dataclass
class Execution:
    """A cell's outcome. `truncated`: output past the sandbox's bound was dropped; `timed_out`:
    the timeout interrupted it (KeyboardInterrupt); `restarted`: it ignored the interrupt, so
    its context was started again, empty."""

    results: builtins.list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    context: str | None = None
    truncated: bool = False
    timed_out: bool = False
    restarted: bool = False

    @property
    def text(self) -> str | None:
        """The main result's text (the cell's last expression), if there is one."""
        main = next((r for r in self.results if r.is_main_result), None)
        return main.text if main is not None else None


@dataclass(frozen=True)
class CodeContext:
    id: str
    language: str
    cwd: str

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> CodeContext:
        return cls(str(raw["id"]), str(raw["language"]), str(raw["cwd"]))


class Code:
    """The protocol's code messages (docs/protocol.md, "Code contexts")."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def run(
        self,
        code: str,
        *,
        language: str = "python",
        context: str | CodeContext | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        on_result: OutputCallback | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the sandbox interrupts the cell)
        envs: dict[str, str] | None = None,
    ) -> Execution:
        message: dict[str, Any] = {"type": "runCode", "code": code, "language": language}
        if context is not None:
            message["context"] = context.id if isinstance(context, CodeContext) else context
        if timeout is not None:
            message["timeout"] = float(timeout)
        if envs:
            message["envs"] = dict(envs)
        execution = Execution()
        connection = await self._session.connection()
        async with connection.stream(message) as replies:
            async for reply in replies:
                kind = reply.get("type")
                if kind == "codeOutput":
                    text = str(reply.get("text", ""))
                    if reply.get("stream") == "stderr":
                        execution.logs.stderr.append(text)
                        await _notify(on_stderr, text)
                    else:
                        execution.logs.stdout.append(text)
                        await _notify(on_stdout, text)
                elif kind == "codeResult":
                    result = Result.from_wire(reply.get("result") or {})
                    execution.results.append(result)
                    await _notify(on_result, result)
                elif is_final(reply):
                    return _finish(execution, reply)
        raise connection.closed_error()

    async def create_context(
        self, *, language: str = "python", cwd: str | None = None
    ) -> CodeContext:
        message: dict[str, Any] = {"type": "createContext", "language": language}
        if cwd is not None:
            message["cwd"] = cwd
        reply = await (await self._session.connection()).call(message)
        return CodeContext.from_wire(reply["context"])

    async def list_contexts(self) -> builtins.list[CodeContext]:
        reply = await (await self._session.connection()).call({"type": "listContexts"})
        return [CodeContext.from_wire(raw) for raw in reply.get("contexts", [])]

    async def restart_context(self, context: str | CodeContext) -> CodeContext:
        message = {"type": "restartContext", "context": _context_id(context)}
        reply = await (await self._session.connection()).call(message)
        return CodeContext.from_wire(reply["context"])

    async def remove_context(self, context: str | CodeContext) -> None:
        message = {"type": "removeContext", "context": _context_id(context)}
        await (await self._session.connection()).call(message)

    async def interrupt(self, context: str | CodeContext = "python") -> None:
        message = {"type": "interruptCode", "context": _context_id(context)}
        await (await self._session.connection()).call(message)


def _context_id(context: str | CodeContext) -> str:
    return context.id if isinstance(context, CodeContext) else context


def _finish(execution: Execution, reply: dict[str, Any]) -> Execution:
    check(reply)  # an `error` answer (CONTEXT_DIED, BAD_REQUEST) raises RPCError
    error = reply.get("error")
    if isinstance(error, dict):
        execution.error = ExecutionError(
            str(error.get("name", "")), str(error.get("value", "")), str(error.get("traceback", ""))
        )
    execution.execution_count = reply.get("executionCount")
    execution.context = reply.get("context")
    execution.truncated = bool(reply.get("truncated"))
    execution.timed_out = bool(reply.get("timedOut"))
    execution.restarted = bool(reply.get("restarted"))
    return execution
