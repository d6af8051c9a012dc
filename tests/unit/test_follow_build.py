"""One reader of the Docker Engine's build stream, for the sandbox images and the server's."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from insien.tooling.images import ImageBuildError, follow_build


def quiet() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_the_steps_are_printed_and_a_finished_build_says_so() -> None:
    console, out = quiet()
    stream = [
        {"stream": "Step 1/2 : FROM x\n"},
        {"stream": " ---> abc\n"},
        {"stream": "Step 2/2 : RUN true\n"},
    ]
    follow_build(iter(stream), "t:1", console)
    assert out.getvalue().splitlines() == [
        "  Step 1/2 : FROM x",
        "  Step 2/2 : RUN true",
        "Built t:1.",
    ]


def test_an_error_in_the_stream_fails_the_build_with_the_engines_message() -> None:
    console, out = quiet()
    stream = [{"stream": "Step 1/1 : RUN false\n"}, {"error": "returned a non-zero code: 1\n"}]
    with pytest.raises(ImageBuildError, match=r"^returned a non-zero code: 1$"):
        follow_build(iter(stream), "t:1", console)
    assert "Built" not in out.getvalue()
