"""A Docker Engine for `insien serve`: the configured one (DOCKER_HOST, else the default
socket) when it answers; where none does and this user may run dockerd (root), a private one
with its own data, exec root, pid file and socket under the cache dir, running as long as the
service; otherwise one line saying what to install or start, not docker-py's traceback text."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import docker
import docker.errors

DEFAULT_SOCKET = "/var/run/docker.sock"
RUNSC_ARGS = ["--network=none"]
"""Debian's runsc refuses Docker's network "none" unless its own networking is off too (as
.ci/run registers it with the system dockerd)."""
START_TIMEOUT = 60.0
STOP_TIMEOUT = 45.0
"""dockerd stops its containers first (15 s each at most, in parallel) before it exits."""
MAX_SOCKET_PATH = 100
"""A unix socket's path must fit sun_path (108 bytes); containerd's lives under the exec root."""

SocketState = Literal["missing", "denied", "present", "remote"]


class EngineUnavailable(Exception):
    """No Docker Engine can be had; the message is one line saying what to do about it."""


@dataclass(frozen=True)
class Host:
    """What decides where the service's Docker Engine comes from (`survey` gathers it)."""

    docker_host: str | None
    """DOCKER_HOST, or None for Docker's default socket."""
    error: str | None
    """Why the configured engine did not answer a ping; None when it did."""
    socket_state: SocketState
    """Whether the unix socket the configuration names exists and this user may open it."""
    dockerd: str | None
    """dockerd's path, when it is installed."""
    root: bool


@dataclass(frozen=True)
class UseConfigured:
    """The configured engine answers: use it."""


@dataclass(frozen=True)
class StartPrivate:
    """Start (or share) a private dockerd with this binary, and point DOCKER_HOST at it."""

    dockerd: str


@dataclass(frozen=True)
class Refuse:
    """Stop with this one-line message."""

    message: str


Plan = UseConfigured | StartPrivate | Refuse


def socket_path(docker_host: str | None) -> str | None:
    """The unix socket a DOCKER_HOST names (None: the default), or None for a remote engine."""
    if not docker_host:
        return DEFAULT_SOCKET
    if docker_host.startswith("unix://"):
        return docker_host.removeprefix("unix://")
    return None


def decide(host: Host, allow_private: bool) -> Plan:
    """Where the engine comes from: the configured one, a private dockerd (only for a local
    socket, only as root with dockerd installed), or a message saying what to install or start."""
    if host.error is None:
        return UseConfigured()
    if host.socket_state == "remote":
        # Someone chose that engine on purpose: a local one in its place would surprise them.
        return Refuse(
            f"cannot reach the Docker Engine at DOCKER_HOST={host.docker_host}: {host.error}"
        )
    where = socket_path(host.docker_host)
    if host.dockerd is None:
        return Refuse(
            f"no Docker Engine at {where} and dockerd is not installed: install docker.io and "
            "start dockerd (sudo apt-get install docker.io && sudo systemctl start docker)"
        )
    if host.root and allow_private:
        return StartPrivate(host.dockerd)
    if host.socket_state == "denied":
        return Refuse(
            f"no permission to use the Docker Engine's socket {where}: add yourself to the "
            "docker group (sudo usermod -aG docker $USER, then log in again)"
        )
    if host.root:
        return Refuse(
            f"no Docker Engine answers at {where}: start dockerd (systemctl start docker)"
        )
    return Refuse(
        f"no Docker Engine answers at {where}: start dockerd (sudo systemctl start docker), or "
        "run insien serve as root to let it start a private one"
    )


def survey() -> Host:
    """Ping the configured engine and look at what this machine and user have."""
    docker_host = os.environ.get("DOCKER_HOST") or None
    error: str | None = None
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        error = str(exc)
    else:
        try:
            client.ping()
        except docker.errors.DockerException as exc:
            error = str(exc)
        finally:
            client.close()
    return Host(
        docker_host=docker_host,
        error=error,
        socket_state=_socket_state(socket_path(docker_host)),
        dockerd=shutil.which("dockerd"),
        root=os.geteuid() == 0,
    )


def _socket_state(path: str | None) -> SocketState:
    if path is None:
        return "remote"
    if not os.path.exists(path):
        return "missing"
    return "present" if os.access(path, os.R_OK | os.W_OK) else "denied"


def private_home() -> Path:
    """Where a private dockerd keeps everything: $XDG_CACHE_HOME/insien/dockerd."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "insien" / "dockerd"


@contextmanager
def engine_for_serve(allow_private: bool, say: Callable[[str], None]) -> Iterator[None]:
    """A Docker Engine for as long as the service runs: DOCKER_HOST names a private dockerd
    inside when the configured engine does not answer; EngineUnavailable when none can be had."""
    plan = decide(survey(), allow_private)
    if isinstance(plan, Refuse):
        raise EngineUnavailable(plan.message)
    if isinstance(plan, UseConfigured):
        yield
        return
    engine = PrivateDockerd(plan.dockerd, private_home())
    previous = os.environ.get("DOCKER_HOST")
    with engine.running(say):
        os.environ["DOCKER_HOST"] = engine.url
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = previous


class PrivateDockerd:
    """A dockerd of Insien's own, beside any system one and touching none of its state: its
    own data root, exec root, pid file, socket, containerd namespace and config file, no bridge
    and no iptables rules (sandboxes run with network "none"), runsc registered when present.

    Several `insien serve` may share it: each holds a shared lock on `lock` while it runs, and
    the last one out (the one that gets the lock exclusively) stops it."""

    def __init__(self, dockerd: str, home: Path) -> None:
        self.dockerd = dockerd
        self.home = home

    @property
    def socket(self) -> Path:
        return self.home / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.home / "dockerd.pid"

    @property
    def log(self) -> Path:
        return self.home / "dockerd.log"

    def command(self) -> list[str]:
        """dockerd's command line; its config file (written by `start`) names runsc. It runs in
        a network namespace of its own (`unshare --net`, which then execs it: same pid): a
        dockerd started without a bridge deletes any `docker0` it finds, which would be the
        system engine's."""
        unshare = shutil.which("unshare")
        if unshare is None:
            raise EngineUnavailable(
                "a private dockerd needs `unshare` (util-linux) to keep off the system's network"
            )
        return [
            unshare,
            "--net",
            "--",
            self.dockerd,
            "--config-file",
            str(self.home / "daemon.json"),
            "--data-root",
            str(self.home / "data"),
            "--exec-root",
            str(self.home / "exec"),
            "--pidfile",
            str(self.pidfile),
            "--host",
            self.url,
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--containerd-namespace=insien-private",
            "--containerd-plugins-namespace=insien-private-plugins",
        ]

    @staticmethod
    def config(runsc: str | None) -> dict[str, dict[str, dict[str, str | list[str]]]]:
        """The daemon.json it starts with: our own, so /etc/docker/daemon.json never applies."""
        if runsc is None:
            return {}
        return {"runtimes": {"runsc": {"path": runsc, "runtimeArgs": RUNSC_ARGS}}}

    @contextmanager
    def running(self, say: Callable[[str], None]) -> Iterator[None]:
        """This dockerd answering on `socket` inside; stopped after, unless another
        `insien serve` still uses it."""
        exec_socket = self.home / "exec" / "containerd" / "containerd.sock.ttrpc"
        if len(str(exec_socket)) > MAX_SOCKET_PATH:
            raise EngineUnavailable(
                f"the private dockerd's directory {self.home} is too deep for its sockets: "
                "set XDG_CACHE_HOME to a shorter path"
            )
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.home / "lock").open("a") as lock:
            started = self._join(lock, say)
            try:
                yield
            finally:
                # Another service may still use it: the last one out stops it.
                if _lock_exclusively(lock):
                    self._stop(started)

    def _join(self, lock: IO[str], say: Callable[[str], None]) -> subprocess.Popen[bytes] | None:
        """Take a shared lock on a running private dockerd, starting it when nobody runs it;
        the process when this call started it."""
        deadline = time.monotonic() + START_TIMEOUT
        while not _lock_exclusively(lock):
            # Another service holds it: wait out its start or stop, then share it.
            fcntl.flock(lock, fcntl.LOCK_SH)
            if self._answers():
                say(f"no Docker Engine answered; sharing the private dockerd at {self.url}")
                return None
            fcntl.flock(lock, fcntl.LOCK_UN)
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"the private dockerd at {self.url} does not answer")
            time.sleep(0.2)
        started = None if self._answers() else self._start()
        fcntl.flock(lock, fcntl.LOCK_SH)
        say(
            f"no Docker Engine answered; using a private dockerd at {self.url} (data in "
            f"{self.home / 'data'}), which stops with this service"
        )
        return started

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            client = docker.DockerClient(base_url=self.url, timeout=10)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except docker.errors.DockerException:
            return False
        finally:
            client.close()

    def _start(self) -> subprocess.Popen[bytes]:
        # A dockerd killed earlier leaves its pid file behind, and a new one refuses to start.
        if self.pidfile.exists() and self._running_pid() is None:
            self.pidfile.unlink()
        runsc = shutil.which("runsc")
        (self.home / "daemon.json").write_text(json.dumps(self.config(runsc)))
        with self.log.open("ab") as log:
            # Its own session: a Ctrl-C for the service must not stop the engine under it.
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                raise EngineUnavailable(
                    f"the private dockerd did not start ({self.log}): {self._last_log_line()}"
                )
            time.sleep(0.1)
        return process

    def _running_pid(self) -> int | None:
        """The pid file's dockerd when it is alive and is this one (its data root), else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if str(self.home / "data").encode() in cmdline else None

    def _stop(self, started: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM (dockerd stops its containers, then exits), SIGKILL after STOP_TIMEOUT."""
        pid = started.pid if started is not None else self._running_pid()
        if pid is None:
            return
        for sig, timeout in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
            while _alive(pid, started):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            else:
                return

    def _last_log_line(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no log"


def _alive(pid: int, started: subprocess.Popen[bytes] | None) -> bool:
    if started is not None:
        return started.poll() is None  # our child: poll reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _lock_exclusively(lock: IO[str]) -> bool:
    """An exclusive lock on `lock` if nobody else holds one of any kind (a shared lock this
    process holds is given up either way)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
