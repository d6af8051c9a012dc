"""envd's directory watching, on the agent's `watch`: `WatchDir` streams events to its caller;
`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher` (what the blocking SDK polls) keep a
watch running in the server's background nursery and hold its events, bounded, until polled.
envd 0.6.3's `include_entry` gives create, write and chmod events the entry at their path;
0.6.4's `allow_network_mounts` lifts the refusal of NFS, CIFS/SMB and FUSE directories (none of
which a sandbox can mount: Insien's volumes are local filesystems, watched either way)."""

from __future__ import annotations

import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio
from pydantic import BaseModel, ConfigDict, Field

from ...link import AgentGone
from ...protocol import Message, ProtocolError
from ..background import Background, BackgroundClosed
from .calls import Emit, EnvdCall, Method, checked, connect_code
from .connect import Code, ConnectError
from .filesystem import entry_info, sandbox_path

log = logging.getLogger(__name__)

EVENT_TYPES = {
    "create": "EVENT_TYPE_CREATE",
    "write": "EVENT_TYPE_WRITE",
    "remove": "EVENT_TYPE_REMOVE",
    "rename": "EVENT_TYPE_RENAME",
    "chmod": "EVENT_TYPE_CHMOD",
}
KEPT_EVENTS = 4096
"""Events a polled watcher holds between polls; past it they are dropped (and counted)."""
MAX_WATCHERS = 1024
PER_SANDBOX = 32


class WatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    path: str = Field(min_length=1)
    recursive: bool = False
    include_entry: bool = Field(False, alias="includeEntry")
    allow_network_mounts: bool = Field(False, alias="allowNetworkMounts")


class WatcherRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    watcher_id: str = Field(alias="watcherId", min_length=1, max_length=64)


def _message(request: WatchRequest) -> Message:
    path = sandbox_path(request.path)
    if path is None:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"cannot expand user-specific home dir: {request.path}"
        )
    return {
        "type": "watch",
        "path": path,
        "recursive": request.recursive,
        "includeEntry": request.include_entry,
        "allowNetworkMounts": request.allow_network_mounts,
    }


def _event(event: Message) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": event["name"],
        "type": EVENT_TYPES.get(event["op"], "EVENT_TYPE_UNSPECIFIED"),
    }
    if isinstance(event.get("entry"), dict):
        found["entry"] = entry_info(event["entry"])
    return found


def _events(reply: Message) -> list[dict[str, Any]]:
    return [_event(event) for event in reply.get("events", [])]


async def watch_dir(call: EnvdCall, emit: Emit) -> None:
    request = call.parse(WatchRequest)
    try:
        async with call.link.request(_message(request)) as pending:
            async for reply in pending:
                kind = reply.message.get("type")
                if kind == "watchStarted":
                    await emit({"start": {}})
                elif kind == "fsEvents":
                    for event in _events(reply.message):
                        await emit({"filesystem": event})
                else:
                    if kind != "watchEnded":
                        checked(reply.message)
                    return
    except AgentGone as exc:
        raise call.gone(exc) from None
    except ProtocolError as exc:
        raise ConnectError(connect_code(exc.code), exc.message) from None


@dataclass(eq=False)
class PolledWatch:
    id: str
    sandbox_id: str
    events: deque[dict[str, Any]] = field(default_factory=deque)
    dropped: int = 0
    ended: bool = False
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def keep(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if len(self.events) >= KEPT_EVENTS:
                self.dropped += 1
            else:
                self.events.append(event)


class PolledWatches:
    """The polled watchers of every sandbox, each a task in the background nursery."""

    def __init__(self, background: Background) -> None:
        self._background = background
        self._watches: dict[str, PolledWatch] = {}

    def _forget_ended(self) -> None:
        for key in [k for k, w in self._watches.items() if w.ended and not w.events]:
            del self._watches[key]

    async def create(self, call: EnvdCall) -> dict[str, Any]:
        request = call.parse(WatchRequest)
        self._forget_ended()
        mine = sum(1 for w in self._watches.values() if w.sandbox_id == call.sandbox.id)
        if mine >= PER_SANDBOX or len(self._watches) >= MAX_WATCHERS:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, "too many directory watchers")
        watch = PolledWatch(secrets.token_hex(8), call.sandbox.id)
        try:
            await self._background.start(self._follow, call, request, watch)
        except BackgroundClosed as exc:
            raise ConnectError(Code.UNAVAILABLE, str(exc)) from None
        self._watches[watch.id] = watch
        return {"watcherId": watch.id}

    async def _follow(
        self,
        call: EnvdCall,
        request: WatchRequest,
        watch: PolledWatch,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        started = False
        with watch.scope:
            try:
                async with call.link.request(_message(request)) as pending:
                    async for reply in pending:
                        kind = reply.message.get("type")
                        if kind == "watchStarted":
                            started = True
                            task_status.started()
                        elif kind == "fsEvents":
                            watch.dropped += int(reply.message.get("dropped", 0))
                            watch.keep(_events(reply.message))
                        elif kind == "watchEnded":
                            return
                        else:
                            checked(reply.message)
                            return
                if not started:
                    raise ConnectError(Code.UNAVAILABLE, "the watch ended before it started")
            except AgentGone as exc:
                if not started:
                    raise call.gone(exc) from None
            except ProtocolError as exc:
                if not started:
                    raise ConnectError(connect_code(exc.code), exc.message) from None
            except ConnectError:
                if not started:
                    raise
            except Exception:
                if not started:
                    raise
                log.exception("polled watcher %s failed", watch.id)
            finally:
                watch.ended = True

    def _find(self, call: EnvdCall) -> PolledWatch:
        watcher_id = call.parse(WatcherRequest).watcher_id
        watch = self._watches.get(watcher_id)
        if watch is None or watch.sandbox_id != call.sandbox.id:
            raise ConnectError(Code.NOT_FOUND, f"watcher {watcher_id} not found")
        return watch

    async def events(self, call: EnvdCall) -> dict[str, Any]:
        watch = self._find(call)
        if watch.ended and not watch.events:
            del self._watches[watch.id]
            raise ConnectError(Code.NOT_FOUND, f"watcher {watch.id} has ended")
        taken = list(watch.events)
        watch.events.clear()
        return {"events": taken}

    async def remove(self, call: EnvdCall) -> dict[str, Any]:
        watch = self._find(call)
        watch.scope.cancel()
        del self._watches[watch.id]
        return {}


def methods(watches: PolledWatches) -> dict[str, Method]:
    return {
        "/filesystem.Filesystem/WatchDir": Method(stream=watch_dir, keepalive={"keepalive": {}}),
        "/filesystem.Filesystem/CreateWatcher": Method(unary=watches.create),
        "/filesystem.Filesystem/GetWatcherEvents": Method(unary=watches.events),
        "/filesystem.Filesystem/RemoveWatcher": Method(unary=watches.remove),
    }
