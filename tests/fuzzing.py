"""Hypothesis strategies for protocol fuzzing: requests of every type, shaped right (an id, a
known type, the type's own fields) but with hostile values, so that every one reaches a
message model and the agent instead of stopping at the first check."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from insien.protocol import EVENT_TYPES, REQUESTS, ErrorCode

CLIENT_ONLY = {"cancel", "detach"}  # answered by the server, never sent to the agent
HARMLESS_COMMANDS = ["true", "false", "echo", "printf", "ls", "pwd", "/no/such/command", ""]
HARMLESS_CELLS = ["1 + 1", "print('x')", "", "x =", "raise ValueError('no')", "import sys"]
"""Cells the fuzzers run (code is executed: no generated text, on a test machine as anyone)."""
KNOWN_CODES = {str(code) for code in ErrorCode} | {"LOST"}

hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", "\x00", "é" * 50, "../../etc/passwd", "a" * 5000, "%s%n", "\n\r"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
hostile = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=10,
)


def field_values(name: str, *, local_paths: bool) -> st.SearchStrategy[Any]:
    """Hostile values for a field, plus plausible ones so that requests also get further in.

    With `local_paths`, paths stay relative names inside the agent's working folder: the agent
    then runs on the test machine, not in a sandbox."""
    if name in ("path", "newPath"):
        safe = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1)
        plausible = safe.filter(lambda p: p not in (".", "..")) if local_paths else hostile_text
        return plausible | (hostile.filter(lambda v: not isinstance(v, str)))
    if name == "cmd":
        return st.sampled_from(HARMLESS_COMMANDS) | hostile.filter(lambda v: not isinstance(v, str))
    if name == "code":
        return st.sampled_from(HARMLESS_CELLS) | hostile.filter(lambda v: not isinstance(v, str))
    if name == "args":
        return st.lists(hostile_text, max_size=3) | hostile
    if name == "cwd" and local_paths:
        return hostile.filter(lambda v: not isinstance(v, str)) | st.just(".")
    if name == "timeout":
        return st.floats(min_value=0.01, max_value=2) | hostile
    if name in ("pid", "target"):
        return st.integers(min_value=-5, max_value=2**33) | hostile
    return hostile


def requests(*, local_paths: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """A request of any type the protocol knows (and a few it does not)."""
    kinds = sorted(set(REQUESTS) - CLIENT_ONLY)

    def of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
        names = [n for n in REQUESTS[kind].model_fields if n not in ("id", "type")]
        return st.fixed_dictionaries(
            {"type": st.just(kind)},
            optional={name: field_values(name, local_paths=local_paths) for name in names},
        )

    return st.one_of(*[of(kind) for kind in kinds], st.builds(lambda t: {"type": t}, hostile))


STARTED_TYPES = ("spawnResponse", "attachResponse", "watchStarted")
"""A request's first event when it follows something until cancelled: the fuzzers cancel it."""


def is_final(message: dict[str, Any]) -> bool:
    return message.get("type") not in EVENT_TYPES


def check_answer(kind: object, final: dict[str, Any]) -> None:
    """A request's final message is its response type or a structured error."""
    if final.get("type") == "error":
        assert final.get("code") in KNOWN_CODES, final
        assert isinstance(final.get("message"), str), final
    elif kind in ("spawn", "attach"):
        assert final.get("type") in ("exit", "detached"), final
    elif kind == "watch":
        assert final.get("type") == "watchEnded", final
    elif kind == "ping":
        assert final.get("type") == "pong", final
    else:
        assert final.get("type") == f"{kind}Response", final
