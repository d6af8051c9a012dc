"""The blocking SDK mirrors the async one: every public method and property of each async
class exists on its blocking twin with the same parameters (`connect` had once lost `binary`,
`CommandHandle` had lost `exited`), and every code-context call reaches both sandboxes."""

from __future__ import annotations

import inspect

import pytest

from insien_sandbox import (
    _async,
    _code,
    _commands,
    _files,
    _network,
    _ports,
    _secrets,
    _sync,
    _volumes,
    _watch,
)

PAIRS = [
    (_async.AsyncSandbox, _sync.Sandbox),
    (_commands.Commands, _sync.Commands),
    (_commands.CommandHandle, _sync.CommandHandle),
    (_commands.Pty, _sync.Pty),
    (_files.Files, _sync.Files),
    (_watch.WatchHandle, _sync.WatchHandle),
    (_ports.Ports, _sync.Ports),
    (_ports.Forward, _sync.Forward),
    (_network.Network, _sync.Network),
    (_volumes.AsyncVolume, _volumes.Volume),
    (_secrets.AsyncSecrets, _secrets.Secrets),
]
# Async-only by nature: the async context protocol, iteration, and trio plumbing.
ASYNC_ONLY = {"__aenter__", "__aexit__", "__aiter__", "__anext__"}


def public(cls: type) -> dict[str, object]:
    return {name: value for name, value in vars(cls).items() if not name.startswith("_")}


def parameters(function: object) -> list[tuple[str, object, object]]:
    target = function.__func__ if isinstance(function, (classmethod, staticmethod)) else function
    signature = inspect.signature(target)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=lambda c: c.__name__)
def test_the_blocking_sdk_has_every_public_member_with_the_same_parameters(
    async_cls: type, sync_cls: type
) -> None:
    sync_members = public(sync_cls)
    for name, member in public(async_cls).items():
        assert name in sync_members, f"{sync_cls.__name__} lacks {name}"
        twin = sync_members[name]
        if isinstance(member, property):
            assert isinstance(twin, property), f"{sync_cls.__name__}.{name} is not a property"
            continue
        if callable(member) or isinstance(member, (classmethod, staticmethod)):
            assert parameters(member) == parameters(twin), f"{sync_cls.__name__}.{name}"


CODE_METHODS = {
    "run": "run_code",
    "create_context": "create_code_context",
    "list_contexts": "list_code_contexts",
    "restart_context": "restart_code_context",
    "remove_context": "remove_code_context",
    "interrupt": "interrupt_code",
}
"""The code interpreter's calls (`_code.Code`, no class of its own in either sandbox) and the
sandbox methods that carry them."""


def test_every_code_context_call_is_a_method_of_both_sandboxes_with_its_parameters() -> None:
    assert set(public(_code.Code)) == set(CODE_METHODS), "a code call has no sandbox method"
    for name, method in CODE_METHODS.items():
        expected = parameters(vars(_code.Code)[name])
        for cls in (_async.AsyncSandbox, _sync.Sandbox):
            assert method in vars(cls), f"{cls.__name__} lacks {method}"
            assert parameters(vars(cls)[method]) == expected, f"{cls.__name__}.{method}"
