"""A Python code context: the long-lived interpreter that runs one sandbox user's cells.

Started by the agent (interpreter.py) as the sandbox user, with site packages as any user
program has them: `python3 agent.pyz --kernel`. Its stdin carries cells as JSON lines and its
stdout only protocol events; what user code writes to file descriptors 1 and 2 (print, C
extensions, subprocesses) goes through pipes that this process reads and forwards as stream
events, so nothing a cell prints can be mistaken for protocol. A cell's last expression and
every `display(...)` become results with every format the object offers (`_repr_html_` and
friends; matplotlib figures as PNG). SIGINT interrupts the running cell (KeyboardInterrupt) and
keeps the context.
"""

from __future__ import annotations

import ast
import base64
import codecs
import contextlib
import json
import linecache
import os
import signal
import sys
import threading
import traceback
import types
import warnings
from typing import Any

KERNEL_FLAG = "--kernel"
CHUNK = 16 * 1024
FORMATS = {
    "html": "_repr_html_",
    "markdown": "_repr_markdown_",
    "svg": "_repr_svg_",
    "png": "_repr_png_",
    "jpeg": "_repr_jpeg_",
    "latex": "_repr_latex_",
    "json": "_repr_json_",
}


class Kernel:
    def __init__(self) -> None:
        self._proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        self._commands = os.fdopen(os.dup(0), "r", encoding="utf-8")
        self._lock = threading.Lock()
        self._readers: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._sync = 0
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # input() in a cell reads nothing rather than the next cell
        os.close(null)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            synced = threading.Event()
            thread = threading.Thread(target=self._pump, args=(read_end, name, synced), daemon=True)
            thread.start()
            self._readers[name] = (thread, synced)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
        # Cells run in a module of their own named __main__ (pickle and multiprocessing look
        # there for what a cell defines), not in this program's.
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        sys.argv = [""]
        self.namespace: dict[str, Any] = main.__dict__
        self.namespace["display"] = self.display
        self.count = 0

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._lock:
            self._proto.write(line + "\n")

    def _marker(self) -> bytes:
        return f"\x00insien-sync-{self._sync}\x00".encode()

    def _pump(self, fd: int, name: str, synced: threading.Event) -> None:
        """Forward what user code writes to `fd` as stream events; a sync marker (written
        after each cell) says everything before it has been forwarded."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = b""
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            while True:
                marker = self._marker()
                found = pending.find(marker)
                if found < 0:
                    break
                self._forward(name, decoder.decode(pending[:found]))
                pending = pending[found + len(marker) :]
                synced.set()
            held = _marker_start(pending, self._marker())  # a marker split across reads
            if held > 0:
                self._forward(name, decoder.decode(pending[:held]))
                pending = pending[held:]

    def _forward(self, name: str, text: str) -> None:
        if not text:
            return
        for start in range(0, len(text), CHUNK):
            self.emit({"type": "stream", "name": name, "text": text[start : start + CHUNK]})

    def flush_output(self) -> None:
        """Wait until everything the cell wrote to fds 1 and 2 has been forwarded."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        marker = self._marker()
        for fd, name in ((1, "stdout"), (2, "stderr")):
            _, synced = self._readers[name]
            synced.clear()
            os.write(fd, marker)
        for _, synced in self._readers.values():
            synced.wait(5)
        self._sync += 1

    # -- results ---------------------------------------------------------------------------

    def formats(self, value: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"text": repr(value)}
        figure = _figure_png(value)
        if figure is not None:
            data["png"] = figure
        for name, method in FORMATS.items():
            render = getattr(value, method, None)
            if not callable(render) or isinstance(value, type):
                continue
            try:
                rendered = render()
            except Exception:  # an object whose display hook fails has no such format
                continue
            if rendered is None:
                continue
            if isinstance(rendered, tuple):  # (data, metadata)
                rendered = rendered[0]
            if isinstance(rendered, bytes):
                rendered = base64.b64encode(rendered).decode()
            data[name] = rendered
        return data

    def display(self, *values: Any) -> None:
        """`display(obj)` in a cell: a result now, with every format `obj` offers."""
        for value in values:
            self.emit({"type": "result", "result": {**self.formats(value), "isMainResult": False}})

    def show_figures(self) -> None:
        """matplotlib figures left open (or shown) by the cell, as PNG results, then closed."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in pyplot.get_fignums():
            png = _figure_png(pyplot.figure(number))
            if png is not None:
                self.emit(
                    {
                        "type": "result",
                        "result": {"text": f"<Figure {number}>", "png": png, "isMainResult": False},
                    }
                )
        pyplot.close("all")

    # -- cells -----------------------------------------------------------------------------

    def run(self, cell: dict[str, Any]) -> None:
        self.count += 1
        code = str(cell.get("code", ""))
        envs = cell.get("envs") or {}
        saved = {str(name): os.environ.get(str(name)) for name in envs}
        error: dict[str, Any] | None = None
        main: Any = None
        has_main = False
        try:
            # Inside the try: a variable the OS cannot take (a NUL byte) is the cell's error,
            # not the end of the context.
            os.environ.update({str(k): str(v) for k, v in envs.items()})
            name = f"<cell {self.count}>"
            # Tracebacks show the cell's lines, as they would a file's.
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
            tree = ast.parse(code, name, "exec")
            last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            if last is not None:
                tree.body.pop()
            exec(compile(tree, name, "exec"), self.namespace)
            if last is not None:
                main = eval(compile(ast.Expression(last.value), name, "eval"), self.namespace)
                has_main = True
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too
            # The cell's own frames only: the first is this method's exec or eval.
            frames = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            error = {
                "name": type(exc).__name__,
                "value": str(exc),
                "traceback": "".join(traceback.format_exception(type(exc), exc, frames)),
            }
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        try:
            self.show_figures()
            if has_main and main is not None and error is None:
                self.namespace["_"] = main
                self.emit(
                    {"type": "result", "result": {**self.formats(main), "isMainResult": True}}
                )
        except BaseException as exc:  # a result that cannot be shown is the cell's error
            error = error or {"name": type(exc).__name__, "value": str(exc), "traceback": ""}
        self.flush_output()
        self.emit({"type": "done", "executionCount": self.count, "error": error})

    def serve(self) -> None:
        self.emit({"type": "ready", "pid": os.getpid(), "python": sys.version.split()[0]})
        for line in self._commands:
            try:
                cell = json.loads(line)
            except ValueError:
                continue
            if isinstance(cell, dict) and cell.get("type") == "setup":
                adopt(cell.get("env") or {})
                continue
            try:
                self.run(cell)
            except KeyboardInterrupt:  # arrived between cells: nothing to stop
                self.emit({"type": "done", "executionCount": self.count, "error": None})


def _marker_start(data: bytes, marker: bytes) -> int:
    """Where a marker could begin at the end of `data` (len(data) if nowhere): only that much
    is held back, so output without one streams at once."""
    for start in range(max(0, len(data) - len(marker) + 1), len(data)):
        if marker.startswith(data[start:]):
            return start
    return len(data)


def _figure_png(value: Any) -> str | None:
    figure_type = getattr(sys.modules.get("matplotlib.figure"), "Figure", None)
    if figure_type is None or not isinstance(value, figure_type):
        return None
    import io

    buffer = io.BytesIO()
    value.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def adopt(env: dict[str, str]) -> None:
    """A kernel started ahead of use (a pooled sandbox) takes the variables of the sandbox
    that claimed it, as if it had started with them."""
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("MPLBACKEND", "Agg")


def kernel_main() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures become results, never windows
    warnings.filterwarnings("ignore", message=".*non-GUI backend.*")
    warnings.filterwarnings("ignore", message=".*FigureCanvasAgg is non-interactive.*")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    Kernel().serve()
