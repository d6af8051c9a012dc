"""Code contexts in a real sandbox through the server and the SDK (issue 15, first part):
state kept between cells, streaming, results with their formats, errors, separate contexts,
interrupts that keep the context, a cell that ignores them, a context that died, bounds."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator

import pytest
import trio

from insien_sandbox import AsyncSandbox, CodeContext, Result, RPCError, Sandbox
from tests.conftest import Server
from tests.e2e.restartable import Restartable, restartable
from tests.e2e.test_pool import wait_for_pool

__all__ = ["restartable"]  # the fixture, used by name

RICH = """
class Table:
    def _repr_html_(self):
        return "<table><tr><td>1</td></tr></table>"
    def _repr_markdown_(self):
        return "| 1 |"
    def _repr_png_(self):
        return b"\\x89PNG fake"
    def __repr__(self):
        return "Table(1)"
"""


@pytest.fixture(scope="module")
def box(server: Server) -> Iterator[Sandbox]:
    sandbox = Sandbox(api_key=server.api_key, base_url=server.url)
    yield sandbox
    sandbox.destroy()


def test_state_streaming_and_results(box: Sandbox) -> None:
    seen: list[str] = []
    first = box.run_code("import math\nx = 41\nprint('hi')\nx + 1", on_stdout=seen.append)
    assert (first.text, first.error, first.logs.stdout) == ("42", None, ["hi\n"])
    assert seen == ["hi\n"]
    second = box.run_code("x = x + 1\nmath.sqrt(x * 2 - 3)")  # the same context: x and math kept
    assert second.text == "9.0"
    assert first.execution_count is not None
    assert second.execution_count == first.execution_count + 1
    streamed = box.run_code(
        "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)"
    )
    assert "".join(streamed.logs.stdout) == "0\n1\n2\n"
    assert len(streamed.logs.stdout) == 3  # three chunks, as they came


def test_results_carry_every_format_and_display(box: Sandbox) -> None:
    results: list[Result] = []
    execution = box.run_code(RICH + "display(Table())\nTable()", on_result=results.append)
    assert execution.error is None
    shown, main = execution.results
    assert results == execution.results
    assert not shown.is_main_result
    assert main.is_main_result
    assert main.text == "Table(1)"
    assert main.html == "<table><tr><td>1</td></tr></table>"
    assert main.markdown == "| 1 |"
    assert main.png == "iVBORyBmYWtl"  # base64 of the bytes
    assert main.formats() == ["text", "html", "markdown", "png"]
    assert box.run_code("x = 1").results == []  # a statement has no main result
    assert box.run_code("None").results == []


def test_errors_and_what_a_cell_writes_itself(box: Sandbox) -> None:
    failed = box.run_code("def f():\n    return 1 / 0\nf()")
    assert failed.error is not None
    assert failed.error.name == "ZeroDivisionError"
    assert "return 1 / 0" in failed.error.traceback
    assert box.run_code("1 +").error.name == "SyntaxError"  # type: ignore[union-attr]
    raw = box.run_code(
        "import os, subprocess\nos.write(2, b'fd two\\n')\nsubprocess.run(['echo', 'child'])\n"
    )
    assert raw.logs.stderr == ["fd two\n"]
    assert raw.logs.stdout == ["child\n"]
    assert (
        box.run_code("import os\nos.environ.get('ONLY_HERE')", envs={"ONLY_HERE": "yes"}).text
        == "'yes'"
    )
    who = box.run_code("import os\nos.getuid(), os.getcwd()")  # the sandbox user, at home
    assert who.text == "(1000, '/home/user')"
    unset = box.run_code("import os\nos.environ.get('ONLY_HERE')")
    assert (unset.error, unset.results) == (None, [])  # None is no result, as in a notebook


def test_contexts_share_nothing(box: Sandbox) -> None:
    mine = box.create_code_context()
    assert isinstance(mine, CodeContext)
    box.run_code("secret = 'mine'", context=mine)
    assert box.run_code("secret", context=mine).text == "'mine'"
    other = box.run_code("secret")  # the default context never saw it
    assert other.error is not None
    assert other.error.name == "NameError"
    assert mine.id in {c.id for c in box.list_code_contexts()}
    restarted = box.restart_code_context(mine)
    assert box.run_code("secret", context=restarted).error.name == "NameError"  # type: ignore[union-attr]
    box.remove_code_context(mine)
    assert mine.id not in {c.id for c in box.list_code_contexts()}
    with pytest.raises(RPCError) as gone:
        box.run_code("1", context=mine)
    assert gone.value.code == "NOT_FOUND"


def test_a_timeout_interrupts_and_keeps_the_context(box: Sandbox) -> None:
    box.run_code("kept = 'still here'")
    started = time.monotonic()
    execution = box.run_code("import time\nwhile True:\n    time.sleep(0.05)", timeout=1)
    assert time.monotonic() - started < 10
    assert execution.timed_out
    assert execution.error is not None
    assert execution.error.name == "KeyboardInterrupt"
    assert not execution.restarted
    assert box.run_code("kept").text == "'still here'"


def test_a_cell_that_ignores_the_interrupt_restarts_its_context(box: Sandbox) -> None:
    context = box.create_code_context()
    box.run_code("value = 1", context=context)
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    execution = box.run_code(stubborn, context=context, timeout=1)
    assert execution.timed_out
    assert execution.restarted
    after = box.run_code("value", context=context)  # running again, and empty
    assert after.error is not None
    assert after.error.name == "NameError"


def test_a_context_that_died_is_reported_not_waited_on(box: Sandbox) -> None:
    context = box.create_code_context()
    with pytest.raises(RPCError) as died:
        box.run_code("import os\nos._exit(3)", context=context)
    assert died.value.code == "CONTEXT_DIED"
    with pytest.raises(RPCError) as again:
        box.run_code("1", context=context)
    assert again.value.code == "CONTEXT_DIED"
    assert "exited with code 3" in again.value.message
    box.restart_code_context(context)
    assert box.run_code("2 + 2", context=context).text == "4"


def test_a_context_killed_from_outside_is_reported_and_restartable(box: Sandbox) -> None:
    context = box.create_code_context()
    box.run_code("kept = 1", context=context)
    pid = box.run_code("import os\nos.getpid()", context=context).text
    assert box.commands.run(f"kill -9 {pid}").exit_code == 0
    with pytest.raises(RPCError) as died:
        box.run_code("kept", context=context)
    assert died.value.code == "CONTEXT_DIED"
    assert "was killed by signal 9" in died.value.message
    box.restart_code_context(context)
    fresh = box.run_code("kept", context=context)
    assert fresh.error is not None
    assert fresh.error.name == "NameError"


def test_a_cell_that_runs_out_of_memory_is_reported(server: Server) -> None:
    """The OOM killer ends the context's process in a sandbox with a memory limit: the cell
    answers CONTEXT_DIED naming the memory limit, the agent and other contexts live on."""
    with Sandbox(
        api_key=server.api_key, base_url=server.url, resources={"memory": "256m"}
    ) as small:
        other = small.create_code_context()
        small.run_code("survivor = 'yes'", context=other)
        with pytest.raises(RPCError) as died:
            small.run_code("hog = bytearray(2 * 2**30)\nhog[::4096] = b'x' * len(hog[::4096])")
        assert died.value.code == "CONTEXT_DIED"
        assert "out-of-memory killer" in died.value.message
        assert small.run_code("survivor", context=other).text == "'yes'"
        assert small.commands.run("echo alive").stdout == "alive\n"


def test_twenty_cells_run_at_once_in_twenty_contexts(server: Server) -> None:
    """Contexts are separate processes: twenty cells that each sleep a second finish together,
    each seeing only its own state."""

    async def scenario() -> None:
        async with AsyncSandbox(api_key=server.api_key, base_url=server.url) as sandbox:
            contexts = [await sandbox.create_code_context() for _ in range(20)]
            answers: dict[int, str | None] = {}

            async def cell(i: int) -> None:
                await sandbox.run_code(f"mine = {i}", context=contexts[i])
                done = await sandbox.run_code(
                    "import time\ntime.sleep(1)\nmine * 10", context=contexts[i]
                )
                answers[i] = done.text

            start = time.monotonic()
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(cell, i)
            assert answers == {i: str(i * 10) for i in range(20)}
            assert time.monotonic() - start < 15  # not twenty seconds one after another

    trio.run(scenario)


def test_endless_output_is_truncated_and_stays_interruptible(box: Sandbox) -> None:
    execution = box.run_code("while True:\n    print('x' * 1000)", timeout=3)
    assert execution.truncated
    assert execution.timed_out
    assert sum(len(chunk) for chunk in execution.logs.stdout) <= 4 * 1024 * 1024
    assert box.run_code("'alive'").text == "'alive'"


def test_charts_and_tables_on_the_interpreter_image(server: Server, interpreter_image: str) -> None:
    """On the interpreter image (Debian's matplotlib, numpy, pandas): a figure shown with
    plt.show() or left as the last expression comes back as PNG; a DataFrame as text and
    HTML; nothing warns about a non-GUI backend."""
    with Sandbox(api_key=server.api_key, base_url=server.url, template=interpreter_image) as box:
        shown = box.run_code(
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"
        )
        assert shown.error is None
        (figure,) = shown.results
        png = base64.b64decode(figure.png or "")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])  # matplotlib's default 6.4x4.8 in
        assert 300 <= width <= 1000
        assert 200 <= height <= 800
        assert len(png) > 5000  # a drawn chart, not an empty canvas
        assert shown.logs.stderr == []
        last = box.run_code("fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 5])\nfig")
        pngs = [r for r in last.results if r.png]
        assert pngs
        assert any(r.is_main_result for r in pngs)
        table = box.run_code(
            "import numpy as np, pandas as pd\n"
            "pd.DataFrame({'x': np.arange(3), 'y': ['a', 'b', 'c']})"
        )
        (frame,) = table.results
        assert frame.is_main_result
        assert "<table" in (frame.html or "")
        assert frame.text is not None
        assert "x" in frame.text


def test_javascript_cells(box: Sandbox) -> None:
    """A Node context: top-level declarations kept, console output streamed, the last
    expression's value, errors, and a timeout that interrupts and keeps the context."""
    first = box.run_code("let total = 40; console.log('from node'); total + 2", language="js")
    assert (first.text, first.error, first.logs.stdout) == ("42", None, ["from node\n"])
    assert box.run_code("total += 1; ({ total })", language="javascript").text == "{ total: 41 }"
    failed = box.run_code("undefinedThing()", language="js")
    assert failed.error is not None
    assert failed.error.name == "ReferenceError"
    spun = box.run_code("while (true) {}", language="js", timeout=1)
    assert spun.timed_out
    assert spun.error is not None
    assert spun.error.name == "KeyboardInterrupt"
    assert box.run_code("total", language="js").text == "41"
    assert box.run_code("total").error is not None  # Python's context is another one


def test_a_pooled_interpreter_sandbox_has_its_context_running_before_the_first_cell(
    restartable: Restartable, interpreter_image: str
) -> None:
    """A warm pool of the interpreter image (labelled `insien.contexts=python`) starts each
    sandbox's Python context ahead of use; the first cell after a create runs in that process,
    with the create's variables and the sandbox user's identity as a fresh context has them."""
    pools = [{"template": interpreter_image, "size": 1}]
    server = restartable.start(INSIEN_POOLS=json.dumps(pools), INSIEN_POOL_MAX="1")
    trio.run(wait_for_pool, server, 1)
    with Sandbox(
        api_key=server.api_key,
        base_url=server.url,
        template=interpreter_image,
        env={"FROM_CREATE": "here"},
    ) as box:
        before = box.commands.run("pgrep -f -- ' --kernel$'")
        assert before.exit_code == 0, "a kernel runs before any cell"
        first = box.run_code(
            "import os\nos.getpid(), os.getuid(), os.environ['FROM_CREATE'], os.environ['HOME']"
        )
        assert first.error is None, first.error
        shell = box.commands.run("echo $(id -u) $HOME").stdout.split()
        assert first.text == repr((int(before.stdout.split()[0]), int(shell[0]), "here", shell[1]))
