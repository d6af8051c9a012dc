"""Who user code runs as, and how the agent acts as that user for file operations.

The agent runs as root so that user code cannot reach it: commands start under an unprivileged
uid (no capabilities, no supplementary groups), which can neither signal nor ptrace the agent
nor open its `/proc/<pid>/fd`, so it cannot forge protocol lines or kill it. File requests run
in worker threads whose effective uid and gid are the user's: the kernel checks every path,
symlinks included, as it would for user code, so a link planted in the sandbox leads nowhere
the user could not already go.

Credentials are per thread in the kernel; glibc's setresuid() changes every thread of the
process to keep POSIX semantics, so the worker threads make the raw system call instead. Their
real and saved uid stay root, which keeps them out of reach of the user's signals and ptrace,
and the switch clears their effective capabilities. (setfsuid would do on Linux, but gVisor
does not implement it; this works under both runc and runsc.)
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import platform
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .accounts import Account, user_by_name, user_by_uid

T = TypeVar("T")

AS_AGENT = "agent"
"""`INSIEN_AGENT_USER` value that runs user code as the agent itself (tests outside Docker)."""

FILE_THREADS = 4


class IdentityError(Exception):
    """The agent cannot become the user it was told to run code as; it refuses to start."""


@dataclass(frozen=True)
class Identity:
    """The uid/gid user code runs as; `uid is None` means "the agent's own"."""

    uid: int | None
    gid: int | None
    name: str | None
    home: str | None

    @property
    def switches(self) -> bool:
        return self.uid is not None

    def spawn_options(self) -> dict[str, Any]:
        """Keyword arguments for `create_subprocess_exec` that start a child as this user."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def environment(self) -> dict[str, str]:
        """HOME, USER and LOGNAME as a login would set them (the container's are root's)."""
        env: dict[str, str] = {}
        if self.home:
            env["HOME"] = self.home
        if self.name:
            env["USER"] = env["LOGNAME"] = self.name
        return env


ROOT = Identity(None, None, "root", "/root")
"""A command that asked for root (allowed by `AgentSettings.root` only): started by the agent
itself, without the spawner helper and without switching user, with root's HOME and USER."""


def parse_identity(spec: str, workdir: str) -> Identity:
    """`uid:gid`, `uid`, a user name, or `agent`; names and homes come from /etc/passwd."""
    spec = spec.strip()
    if spec == AS_AGENT:
        return Identity(None, None, None, None)
    user_part, _, group_part = spec.partition(":")
    entry: Account | None
    if user_part.isdigit():
        uid = int(user_part)
        entry = user_by_uid(uid)
    else:
        entry = user_by_name(user_part)
        if entry is None:
            raise IdentityError(f"no user named {user_part!r} in this image")
        uid = entry.uid
    if group_part:
        if not group_part.isdigit():
            raise IdentityError(f"group must be numeric, got {group_part!r}")
        gid = int(group_part)
    else:
        gid = entry.gid if entry is not None else uid
    if uid == 0:
        raise IdentityError("user code must not run as root; use 'agent' to mean the agent")
    home = entry.home if entry is not None and entry.home not in ("", "/") else workdir
    return Identity(uid, gid, entry.name if entry is not None else None, home)


_SYSCALLS = {"x86_64": (117, 119), "aarch64": (147, 149)}  # setresuid, setresgid
_UNCHANGED = ctypes.c_long(-1)


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library the agent's interpreter is linked with (`dlopen(NULL)`), never one looked
    for with `ctypes.util.find_library`: that runs the image's /sbin/ldconfig (or gcc) as root."""
    return ctypes.CDLL(None, use_errno=True)


def _become_for_files(uid: int, gid: int) -> None:
    """Thread initializer: from now on this thread alone acts with effective uid:gid."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise IdentityError(f"no per-thread setresuid on {platform.machine()}")
    setresuid, setresgid = numbers
    libc = _libc()
    # The group first: once the effective uid is not root, changing the gid is not allowed.
    if libc.syscall(setresgid, _UNCHANGED, ctypes.c_long(gid), _UNCHANGED) != 0:
        raise IdentityError(f"setresgid({gid}) failed: errno {ctypes.get_errno()}")
    if libc.syscall(setresuid, _UNCHANGED, ctypes.c_long(uid), _UNCHANGED) != 0:
        raise IdentityError(f"setresuid({uid}) failed: errno {ctypes.get_errno()}")
    if (os.geteuid(), os.getegid()) != (uid, gid):
        raise IdentityError(f"the switch to {uid}:{gid} did not take")


class FileWorkers:
    """The threads file requests run in, each acting as the sandbox user."""

    def __init__(self, identity: Identity) -> None:
        if identity.uid is None or identity.gid is None:
            self._pool = ThreadPoolExecutor(FILE_THREADS, thread_name_prefix="files")
        else:
            self._pool = ThreadPoolExecutor(
                FILE_THREADS,
                thread_name_prefix="files",
                initializer=_become_for_files,
                initargs=(identity.uid, identity.gid),
            )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def assume(identity: Identity, workdir: str) -> None:
    """Check, before the first request, that the agent can run code as `identity`.

    Drops the agent's own supplementary groups (root's groups would otherwise apply to file
    requests) and makes sure the working directory exists and belongs to the user if the agent
    had to create it.
    """
    if identity.uid is None or identity.gid is None:
        return
    if os.geteuid() != 0:
        raise IdentityError(
            f"the agent runs as uid {os.geteuid()}, not root, so it cannot run code as "
            f"{identity.uid}; start the container as root"
        )
    os.setgroups([])
    for path in {workdir, identity.home or workdir}:
        if not os.path.isdir(path):
            os.makedirs(path, mode=0o755, exist_ok=True)
            os.chown(path, identity.uid, identity.gid)
        elif _made_for_the_container(path):
            os.chown(path, identity.uid, identity.gid, follow_symlinks=False)


def _made_for_the_container(path: str) -> bool:
    """Whether `path` is an empty folder of root's, not a link: what Docker makes for a working
    folder the image lacks (an image with no user of its own, busybox or Alpine), which the
    user must own to work in, as in an image that has it."""
    found = os.stat(path, follow_symlinks=False)
    return stat.S_ISDIR(found.st_mode) and found.st_uid == 0 and not os.listdir(path)
