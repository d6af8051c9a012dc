"""Code contexts: `createContext`, `listContexts`, `restartContext`, `removeContext`,
`runCode` and `interruptCode`. A context is a long-lived Python process (kernel.py) running as
the sandbox user; its variables, imports and working folder persist between cells, and
contexts never share them. Each language has a default context, made on first use.

`runCode` streams `codeOutput` (stdout/stderr text) and `codeResult` (a result with its
formats) and ends with `runCodeResponse` (execution count, error, and what happened: output
`truncated` past the bound, `timedOut`, `restarted`). A timeout interrupts the cell like
Ctrl-C (KeyboardInterrupt) and keeps the context; a cell that ignores it is killed after a
grace period and its context starts again, empty. A context whose process died is reported on
the next call (CONTEXT_DIED), never waited on.

Long because a context's lifecycle (start, cells, interrupts, restarts, death) shares one
process and its pipe; the kernel that runs cells is `kernel` and `js_kernel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from . import untrusted_json
from .context import Request
from .errors import BAD_REQUEST, CONTEXT_DIED, NOT_FOUND, AgentError
from .fields import optional_str, required_str, str_map
from .js_kernel import JS_KERNEL
from .kernel import KERNEL_FLAG
from .launch import Started, start_process
from .oom import oom_kills
from .selfexec import image_python
from .settings import user_environment
from .spawner import refuse_nul

Message = dict[str, Any]
LANGUAGES = ("python", "javascript")
ALIASES = {"js": "javascript", "node": "javascript", "py": "python"}
START_TIMEOUT = 30.0
INTERRUPT_GRACE = 3.0
MAX_LINE = 64 * 1024 * 1024
"""A kernel event larger than this (a huge image) is dropped, not buffered without end."""
MAX_EVENT_DEPTH = 128
"""How deeply a kernel event may nest: a result's `json` format carries the cell's own data,
so more room than a request gets, and still far below what re-encoding it here and decoding
it on the server can take."""
QUEUED_EVENTS = 64
IGNORED = object()
"""What `until_ignored` gives once a cell has ignored its interrupt past the grace period."""
AGENT_PATH = os.path.abspath(sys.argv[0])
"""The agent's zip, which a kernel runs from (`--kernel`)."""


@dataclass(frozen=True)
class Malformed:
    """A line on the kernel's protocol pipe that was dropped (user code can write there):
    the running cell answers with an error saying so, and the context goes on."""

    reason: str


KernelEvent = Message | Malformed | None
"""What a running cell's queue carries: an event, a dropped line, or None (the kernel died)."""


@dataclass
class Context:
    id: str
    language: str
    cwd: str
    proc: Started
    ready: asyncio.Future[Message]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sink: asyncio.Queue[KernelEvent] | None = None
    death: str | None = None
    reader: asyncio.Task[None] | None = None
    stderr: bytearray = field(default_factory=bytearray)
    oom_kills: int | None = field(default_factory=oom_kills)
    """The sandbox's count of OOM kills when the context started or its last cell began: a
    SIGKILL while it grew was (almost certainly) for memory."""

    def describe(self) -> Message:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}


async def _read_events(context: Context) -> None:
    """The kernel's protocol lines, to whoever runs a cell; then why it ended. A line that is
    not a JSON object is dropped; one too long or nested too deeply is also reported to the
    cell. Nothing a cell writes on the pipe ends this task (the cell would never hear its
    `done`)."""
    assert context.proc.stdout is not None
    buffer = b""
    skipping = False
    while chunk := await context.proc.stdout.read(256 * 1024):
        buffer += chunk
        while (newline := buffer.find(b"\n")) >= 0:
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            if skipping:  # the end of an event past the bound, already reported
                skipping = False
            else:
                await _deliver(context, line)
        if len(buffer) > MAX_LINE and not skipping:
            # An event past the bound: dropped whole, up to the newline that ends it.
            buffer = b""
            skipping = True
            await _malformed(context, f"an event over {MAX_LINE} bytes")
        elif skipping:
            buffer = b""
    _record_death(context, await context.proc.wait())
    if not context.ready.done():
        context.ready.set_exception(AgentError(CONTEXT_DIED, f"the context {context.death}"))
    if context.sink is not None:
        await context.sink.put(None)


def _record_death(context: Context, code: int) -> None:
    """Say once how the context's process ended (its exit code, or the signal, and whether
    the OOM killer did it), with the last lines it wrote to stderr."""
    if context.death is not None:
        return
    tail = context.stderr.decode(errors="replace").strip().splitlines()[-3:]
    why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
    if code == -signal.SIGKILL or code == 128 + signal.SIGKILL:
        kills = oom_kills()
        if kills is not None and context.oom_kills is not None and kills > context.oom_kills:
            why = "was killed by the out-of-memory killer (the sandbox's memory limit)"
        else:
            why += " (out of memory, or killed)"
    context.death = why + (f": {' / '.join(tail)}" if tail else "")


async def _deliver(context: Context, line: bytes) -> None:
    """One kernel event to the cell that runs. The queue is bounded: a cell whose output is
    not taken (its client reads slowly) blocks in its next write, which is the backpressure."""
    try:
        event = untrusted_json.loads(line, max_bytes=MAX_LINE, max_depth=MAX_EVENT_DEPTH)
    except untrusted_json.JsonRefused as exc:
        # Stray text is dropped quietly, as ever (a JS cell's child process given the kernel's
        # stdout writes there); a line past a bound is an attack on this reader: reported.
        if exc.bound:
            await _malformed(context, str(exc))
        return
    if not isinstance(event, dict):
        return
    if event.get("type") == "ready" and not context.ready.done():
        context.ready.set_result(event)
    elif context.sink is not None:
        await context.sink.put(event)


async def _malformed(context: Context, reason: str) -> None:
    """Tell the running cell a line of its kernel's pipe was dropped (with no cell running,
    there is nobody to tell: the line is only dropped)."""
    if context.sink is not None:
        await context.sink.put(Malformed(reason))


async def _collect_stderr(context: Context) -> None:
    assert context.proc.stderr is not None
    while chunk := await context.proc.stderr.read(65536):
        context.stderr += chunk
        del context.stderr[:-4096]


def _kernel_command(language: str) -> tuple[str, list[str]]:
    if language == "javascript":
        return "node", ["-e", JS_KERNEL]
    if os.path.basename(AGENT_PATH) == "__main__.py":  # run as a package (development, tests)
        return sys.executable, ["-m", "insien_agent", KERNEL_FLAG]
    # The image's python3, not the agent's own runtime: cells import the image's packages.
    return image_python(), [AGENT_PATH, KERNEL_FLAG]


class Credit:
    """How many more `codeOutput`/`codeResult` events the server takes (credited like output:
    a client that stops reading stops the cell's events, then the cell's writes)."""

    def __init__(self, window: int) -> None:
        self.n = window
        self.more = asyncio.Event()

    def grant(self, n: int) -> None:
        self.n += n
        self.more.set()

    async def spend(self) -> None:
        while self.n <= 0:
            self.more.clear()
            await self.more.wait()
        self.n -= 1


class Contexts:
    """The agent's code contexts by id (one table per agent)."""

    def __init__(self) -> None:
        self.by_id: dict[str, Context] = {}
        self.spares: dict[str, Context] = {}
        """Default contexts started ahead of use (`warmContexts`), by language."""
        self._defaults: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, req: Request, language: str, cwd: str, context_id: str) -> Context:
        context = await self._launch(req, language, cwd, context_id, _environment(req))
        self.by_id[context_id] = context
        return context

    async def _launch(
        self, req: Request, language: str, cwd: str, context_id: str, env: dict[str, str]
    ) -> Context:
        """A kernel process, once it says it is ready (CONTEXT_DIED if it never does)."""
        cmd, args = _kernel_command(language)
        try:
            proc, _ = await start_process(
                req.identity,
                req.table.spawner,
                cmd,
                args,
                cwd=cwd,
                env=env,
                stdin=True,
                pty_size=None,
            )
        except FileNotFoundError:
            raise AgentError(
                BAD_REQUEST, f"{language} contexts need {cmd!r}, which this image does not have"
            ) from None
        context = Context(
            context_id, language, cwd, proc, asyncio.get_running_loop().create_future()
        )
        for job in (_read_events(context), _collect_stderr(context)):
            task = asyncio.create_task(job)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(context.ready), START_TIMEOUT)
        except asyncio.TimeoutError:  # noqa: UP041 (older Pythons in sandbox images)
            self.kill(context)
            raise AgentError(CONTEXT_DIED, "the context did not start in time") from None
        return context

    async def warm(self, req: Request, language: str) -> None:
        """Start a language's default context ahead of its first use (a pooled sandbox), with
        the variables a sandbox has before anyone claims it; adopting it gives it the rest."""
        async with self._default(language):
            spare = self.spares.get(language)
            if language in self.by_id or (spare is not None and spare.death is None):
                return
            env = user_environment()
            env.update(req.identity.environment())
            env["PYTHONUNBUFFERED"] = "1"
            self.spares[language] = await self._launch(
                req, language, req.settings.workdir, language, env
            )

    async def _adopt(self, req: Request, language: str) -> Context | None:
        """The language's spare as its default context, with the variables a context started
        now would get (the claim's `env`, the egress proxy); None without a live spare."""
        spare = self.spares.pop(language, None)
        if spare is None or spare.death is not None or spare.proc.returncode is not None:
            return None
        assert spare.proc.stdin is not None
        self.by_id[language] = spare
        setup = {"type": "setup", "env": _environment(req)}
        spare.proc.stdin.write(json.dumps(setup).encode() + b"\n")
        try:
            await spare.proc.stdin.drain()
        except (ConnectionError, OSError):
            self.kill(spare)
            del self.by_id[language]
            return None
        return spare

    def kill(self, context: Context) -> None:
        if context.death is None:
            context.death = "was stopped"
        with contextlib.suppress(OSError):
            os.killpg(context.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(context.proc.pid, signal.SIGKILL)

    async def restart(self, req: Request, context: Context) -> Context:
        self.kill(context)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.proc.wait(), 5)
        return await self.start(req, context.language, context.cwd, context.id)

    async def find(self, req: Request, context_id: str | None, language: str) -> Context:
        """A context by id, or the language's default one (started on first use)."""
        if context_id is not None:
            found = self.by_id.get(context_id)
            if found is None:
                raise AgentError(NOT_FOUND, f"no code context {context_id!r}")
            return found
        async with self._default(language):  # two first cells start one default context
            default = self.by_id.get(language) or await self._adopt(req, language)
            if default is None:
                default = await self.start(req, language, req.settings.workdir, language)
            return default

    def _default(self, language: str) -> asyncio.Lock:
        return self._defaults.setdefault(language, asyncio.Lock())


def _environment(req: Request) -> dict[str, str]:
    """A context's variables: the image's user environment, the sandbox's, the egress proxy's
    and the user's identity, as commands get them."""
    env = user_environment()
    env.update(req.environment)
    env.update(req.egress.environment())
    env.update(req.identity.environment())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _contexts(req: Request) -> Contexts:
    assert req.contexts is not None, "the dispatcher gives every request the agent's contexts"
    return req.contexts


def _optional_context(msg: Message) -> str | None:
    value = msg.get("context")
    if value is not None and (not isinstance(value, str) or not value):
        raise AgentError(BAD_REQUEST, "field 'context' must be a context id")
    return value


def _language(msg: Message) -> str:
    language = optional_str(msg, "language", "python") or "python"
    language = ALIASES.get(language, language)
    if language not in LANGUAGES:
        raise AgentError(BAD_REQUEST, f"language {language!r}: this agent runs {list(LANGUAGES)}")
    return language


async def handle_create_context(req: Request) -> Message:
    language = _language(req.msg)
    cwd = os.path.join(req.settings.workdir, optional_str(req.msg, "cwd", "") or "")
    context = await _contexts(req).start(req, language, cwd, secrets.token_hex(8))
    return {"type": "createContextResponse", "context": context.describe()}


async def handle_warm_contexts(req: Request) -> Message:
    """`warmContexts`: start these languages' default contexts now, so that a pooled
    sandbox's first `runCode` does not wait for an interpreter to start."""
    languages = req.msg.get("languages")
    if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
        raise AgentError(BAD_REQUEST, "field 'languages' must be a list of language names")
    chosen = []
    for name in languages:
        language = ALIASES.get(name, name)
        if language not in LANGUAGES:
            raise AgentError(BAD_REQUEST, f"language {name!r}: this agent runs {list(LANGUAGES)}")
        chosen.append(language)
    for language in dict.fromkeys(chosen):
        await _contexts(req).warm(req, language)
    return {"type": "warmContextsResponse", "languages": list(dict.fromkeys(chosen))}


async def handle_list_contexts(req: Request) -> Message:
    alive = [c for c in _contexts(req).by_id.values() if c.death is None]
    return {"type": "listContextsResponse", "contexts": [c.describe() for c in alive]}


async def handle_restart_context(req: Request) -> Message:
    context = await _contexts(req).find(req, required_str(req.msg, "context"), "python")
    context = await _contexts(req).restart(req, context)
    return {"type": "restartContextResponse", "context": context.describe()}


async def handle_remove_context(req: Request) -> Message:
    context = await _contexts(req).find(req, required_str(req.msg, "context"), "python")
    _contexts(req).kill(context)
    _contexts(req).by_id.pop(context.id, None)
    return {"type": "removeContextResponse", "context": context.id}


async def handle_interrupt(req: Request) -> Message:
    context = await _contexts(req).find(req, required_str(req.msg, "context"), "python")
    if context.death is None:
        with contextlib.suppress(OSError):
            os.kill(context.proc.pid, signal.SIGINT)
    return {"type": "interruptCodeResponse", "context": context.id}


async def handle_run_code(req: Request) -> Message:
    msg = req.msg
    code = required_str(msg, "code", allow_empty=True)
    language = _language(msg)
    context_id = _optional_context(msg)
    timeout = msg.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise AgentError(BAD_REQUEST, "field 'timeout' must be a positive number of seconds")
    envs = str_map(msg, "envs")
    refuse_nul(envs=envs)  # the kernel sets them in its own environment, which cannot take one
    context = await _contexts(req).find(req, context_id, language)
    async with context.lock:
        if context.death is not None:
            raise AgentError(
                CONTEXT_DIED,
                f"the context {context.id!r} {context.death}; restart it with restartContext",
            )
        return await _run_cell(req, context, code, envs, timeout)


async def _run_cell(
    req: Request, context: Context, code: str, envs: dict[str, str], seconds: float | None
) -> Message:
    queue: asyncio.Queue[KernelEvent] = asyncio.Queue(QUEUED_EVENTS)
    context.sink = queue
    credit = Credit(req.settings.window)
    req.subscriptions.watchers[req.id] = credit
    outcome: Message = {"truncated": False, "timedOut": False, "restarted": False}
    ignored = asyncio.Event()
    dropped: Malformed | None = None

    async def watchdog() -> None:
        """The timeout: Ctrl-C for the cell, then, if it ignores that, the end of it."""
        if seconds is None:
            return
        await asyncio.sleep(seconds)
        outcome["timedOut"] = True
        with contextlib.suppress(OSError):
            os.kill(context.proc.pid, signal.SIGINT)
        await asyncio.sleep(INTERRUPT_GRACE)
        ignored.set()

    async def until_ignored(waiting: Awaitable[Any]) -> Any:
        """`waiting`'s value, or IGNORED once the cell has ignored its interrupt."""
        task = asyncio.ensure_future(waiting)
        stop = asyncio.ensure_future(ignored.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        return IGNORED

    guard = asyncio.create_task(watchdog())
    context.oom_kills = oom_kills()
    try:
        assert context.proc.stdin is not None
        try:
            context.proc.stdin.write(json.dumps({"code": code, "envs": envs}).encode() + b"\n")
            await context.proc.stdin.drain()
        except (ConnectionError, OSError):
            # Killed from outside a moment ago, and not yet noticed by its reader.
            with contextlib.suppress(asyncio.TimeoutError):
                _record_death(context, await asyncio.wait_for(context.proc.wait(), 5))
            raise AgentError(
                CONTEXT_DIED,
                f"the context {context.id!r} {context.death or 'is gone'}; "
                "restart it with restartContext",
            ) from None
        sent = 0
        limit = req.settings.max_output
        while True:
            event = await until_ignored(queue.get())
            if event is IGNORED:
                await _contexts(req).restart(req, context)
                outcome["restarted"] = True
                error = {
                    "name": "TimeoutError",
                    "value": "the cell ignored the interrupt; its context was started again",
                    "traceback": "",
                }
                return {
                    "type": "runCodeResponse",
                    "context": context.id,
                    "executionCount": None,
                    "error": error,
                    **outcome,
                }
            if event is None:
                raise AgentError(
                    CONTEXT_DIED,
                    f"the context {context.id!r} {context.death}; restart it with restartContext",
                )
            if isinstance(event, Malformed):
                dropped = dropped or event  # the first one says what went wrong
                continue
            kind = event.get("type")
            if kind in ("stream", "result"):
                if kind == "stream":
                    text = str(event.get("text", ""))
                    size = len(text)
                    out: Message = {"type": "codeOutput", "stream": event.get("name"), "text": text}
                else:
                    out = {"type": "codeResult", "result": event.get("result")}
                    size = len(json.dumps(out["result"]))
                if sent + size > limit:
                    outcome["truncated"] = True  # dropped, and the cell goes on (interruptible)
                    continue
                sent += size
                if await until_ignored(credit.spend()) is IGNORED:
                    # Nobody takes the cell's output and it is past its timeout: drop the
                    # rest, so its interrupt can end it (or the context starts again).
                    outcome["truncated"] = True
                    continue
                await req.emit({"id": req.id, **out})
            elif kind == "done":
                return {
                    "type": "runCodeResponse",
                    "context": context.id,
                    "executionCount": event.get("executionCount"),
                    "error": event.get("error") or _dropped_error(dropped),
                    **outcome,
                }
    except asyncio.CancelledError:
        # The caller went away mid-cell: interrupt it, so the context is free for the next.
        with contextlib.suppress(OSError):
            os.kill(context.proc.pid, signal.SIGINT)
        raise
    finally:
        guard.cancel()
        context.sink = None
        req.subscriptions.watchers.pop(req.id, None)


def _dropped_error(dropped: Malformed | None) -> Message | None:
    """The error of a cell that ran to its end but wrote something on the kernel's protocol
    pipe that was dropped (its own error, if it had one, comes first)."""
    if dropped is None:
        return None
    return {
        "name": "ProtocolError",
        "value": f"the cell wrote a line on the kernel's protocol pipe that was dropped: "
        f"{dropped.reason}",
        "traceback": "",
    }
