"""Sandbox: the blocking SDK. An AsyncSandbox runs on a trio loop in a helper thread."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import trio

from ._async import AsyncSandbox
from ._types import CommandResult

T = TypeVar("T")


class _LoopThread:
    """A trio loop in a daemon thread that owns one AsyncSandbox for its whole life."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sandbox = sandbox
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="insien-sandbox", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with self._sandbox:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("this Sandbox is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
        if self._error is not None:
            raise self._error


class Sandbox:
    """A sandbox for blocking code, created on first use, destroyed by `destroy()` or `with`.

    with Sandbox(api_key="...") as sandbox:
        sandbox.write_file("hello.py", "print('hi')")
        print(sandbox.run_command("python3", ["hello.py"]).stdout)
    """

    def __init__(self, api_key: str | None = None, base_url: str | None = None) -> None:
        self._async = AsyncSandbox(api_key=api_key, base_url=base_url)
        self._loop = _LoopThread(self._async)

    @property
    def sandbox_id(self) -> str | None:
        return self._async.sandbox_id

    @property
    def base_url(self) -> str:
        return self._async.base_url

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Destroy the sandbox if it was created, and stop the helper thread."""
        self._loop.close()

    def create(self) -> str:
        return self._loop.run(self._async.create)

    def status(self) -> dict[str, Any]:
        return self._loop.run(self._async.status)

    def destroy(self) -> None:
        self._loop.run(self._async.destroy)

    def run_command(
        self,
        cmd: str,
        args: list[str] | None = None,
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        async def call() -> CommandResult:
            return await self._async.run_command(cmd, args, cwd=cwd, env=env)

        return self._loop.run(call)

    def write_file(self, path: str, content: str | bytes) -> None:
        self._loop.run(self._async.write_file, path, content)

    def get_file(self, path: str) -> str:
        return self._loop.run(self._async.get_file, path)

    def get_file_bytes(self, path: str) -> bytes:
        return self._loop.run(self._async.get_file_bytes, path)
