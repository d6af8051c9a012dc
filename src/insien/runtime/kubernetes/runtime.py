"""Sandboxes as pods. One pod per sandbox, one container `agent` with stdin open
(`stdinOnce: false`, so a restarted server attaches again), everything recovery reads in
annotations (the sealed `insien.*` values; labels carry only what selectors need), no
service-account token, no privilege escalation, all capabilities dropped but the agent's,
seccomp RuntimeDefault, /tmp in memory.

**The agent arrives on the pod's stdin.** The container starts a few lines of Python
(`BOOTSTRAP`) that read the agent's zip from stdin (length and SHA-256 first), write it
read-only into a memory volume and become it; the first attach sends it. A ConfigMap volume
did this first, and cost up to two seconds a create: the kubelet often tries to mount a pod's
ConfigMap before it has registered it ("object not registered") and backs off, a race seen up
to 1.24 (kubernetes/kubernetes#105204), and a ConfigMap stops at 1 MiB. Sending the agent
(230 KB) down a stream that is opened anyway costs milliseconds (docs/kubernetes.md).

**So does the runtime it runs on** (`agent_runtime`: an interpreter with its own loader and
libraries, so the image needs no python3). Either the pod's first program is a POSIX shell
script (`shell_bootstrap`: the image's `/bin/sh`, `dd`, `sha256sum`, `tar`, as busybox and
coreutils have them) that reads the runtime's tar (17 MB) first, or, where an operator staged
the runtime on every node (`stage`, `INSIEN_K8S_AGENT_RUNTIME_DIR`), a read-only hostPath
volume holds it and the pod starts on its loader, running nothing of the image's.

It implements the required core of `Runtime` and no optional capability: the pod API has no
freezer (`Pausable`), no commit (`FilesystemSnapshots`), no stats without metrics-server
(`Stats`: the agent reads its own cgroup), and images live on the nodes (`ImageStore`). The
core answers NOT_SUPPORTED for those; docs/kubernetes.md says what that means for each feature.

Long because pod specs, status reading and the bootstrap's delivery share the pod's shape;
`client`, `attach` and `stage` are modules of their own. Next seam: the pod spec and the
bootstrap into a module.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .. import agent_runtime
from ..base import (
    AGENT_DIR,
    AGENT_ENVIRONMENT,
    AGENT_PATH,
    DEFAULT_PYTHON,
    LABEL_INSTANCE,
    LABEL_PREFIX,
    LABEL_SANDBOX_ID,
    ContainerInfo,
    ContainerSpec,
    RuntimeFailure,
)
from .attach import KubeChannel, run_channel
from .client import KubeClient, KubeError

NAME_ANNOTATION = f"{LABEL_PREFIX}name"
"""What Docker keeps as a container's name (the sealed owner of a claimed pooled sandbox): a
pod cannot be renamed, so it is an annotation."""
POD_PREFIX = "insien-"
START_TIMEOUT = 120.0
ATTACH_RETRY = 0.05
# Once the API server says the pod runs, the kubelet may still refuse an attach for a moment
# (a 500 while it wires the new container's streams, seen under a burst of creates).
RUNNING_ATTACH_GRACE = 5.0
STUCK = {
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
"""Waiting reasons a pod does not get over by itself: the create fails with the message."""
UNSCHEDULABLE = "Unschedulable"
BOOT_MAGIC = b"insien-agent"
RUNTIME_MAGIC = b"insien-runtime"
LOADER_VARIABLES = ("LD_PRELOAD", "LD_AUDIT")
"""Blank in every pod: the image's environment reaches the container, and these would load
the image's code into the brought loader (on Docker the image's values go to the agent as data;
a pod's image is not inspected, so user commands do without them)."""


def bootstrap(folder: str, path: str, run: Sequence[str] | None = None) -> str:
    """The container's program until the agent arrives: root, before anything of the sandbox
    user runs; `folder` (a memory volume) is made root's alone before the agent is written.
    It becomes the agent on `run` (the brought runtime's loader command), else on itself."""
    argv = repr([*run, "-I", "-S", path]) if run else f"[sys.executable, '-I', '-S', {path!r}]"
    return f"""
import hashlib, os, sys
def read(n):
    data = bytearray()
    while len(data) < n:
        piece = os.read(0, n - len(data))
        if not piece:
            sys.exit(3)
        data += piece
    return bytes(data)
header = bytearray()
while not header.endswith(b"\\n") and len(header) < 200:
    header += read(1)
magic, size, digest = bytes(header).split()
if magic != {BOOT_MAGIC!r}:
    sys.exit(3)
agent = read(int(size))
if hashlib.sha256(agent).hexdigest().encode() != digest:
    sys.exit(3)
os.chmod({folder!r}, 0o755)
with open({path!r} + ".new", "xb") as out:
    out.write(agent)
os.chmod({path!r} + ".new", 0o444)
os.rename({path!r} + ".new", {path!r})
argv = {argv}
os.execv(argv[0], argv)
"""


BOOTSTRAP = bootstrap(AGENT_DIR, AGENT_PATH)


def shell_bootstrap(folder: str, command: Sequence[str]) -> str:
    """The first stage where the runtime travels with the agent: a POSIX shell script (busybox's
    ash, dash, bash) that reads `insien-runtime <size> <sha256>` and the runtime's tar from
    stdin, checks and unpacks it into `folder` (root's alone), then execs `command` (the
    brought interpreter running `bootstrap`'s program, `$1`), which reads the agent. `read`
    takes a pipe byte by byte and `dd` with `count_bytes` asks for no more than it needs
    (busybox's `head -c` reads ahead through stdio, and would swallow the agent): nothing of
    the agent is consumed here. Anything else on stdin ends the pod with nothing run."""
    tar = f"{folder}/rt.tar"
    return f"""umask 022
program=$1
read -r magic size digest || exit 3
[ "$magic" = {RUNTIME_MAGIC.decode()} ] || exit 3
case $size in ''|*[!0-9]*) exit 3;; esac
chmod 755 {folder} || exit 3
dd of={tar} bs=65536 count="$size" iflag=count_bytes,fullblock 2>/dev/null || exit 3
set -- $(sha256sum {tar})
[ "$1" = "$digest" ] || exit 3
tar -x -f {tar} -C {folder} >&2 || exit 3
rm -f {tar}
exec {shlex.join(command)} -I -S -c "$program"
"""


def boot_message(agent_zip: bytes, runtime_tar: bytes | None = None) -> bytes:
    """What the bootstrap reads: a line with the size and SHA-256, then the agent; first the
    same for the runtime's tar where it travels too (`shell_bootstrap`)."""
    message = b""
    for magic, data in ((RUNTIME_MAGIC, runtime_tar), (BOOT_MAGIC, agent_zip)):
        if data is not None:
            digest = hashlib.sha256(data).hexdigest().encode()
            message += b"%s %d %s\n" % (magic, len(data), digest) + data
    return message


def staged_dir(root: str, bundle: agent_runtime.Bundle) -> str:
    """Where on a node `stage` puts this runtime: one folder per build, so servers of
    different builds share nodes."""
    return f"{root.rstrip('/')}/{bundle.digest[:20]}"


def _quantity(size: str) -> str:
    """Docker's `256m` as Kubernetes' `256Mi`."""
    match = re.fullmatch(r"(\d+)([kmgt]?)", size.lower())
    if match is None:
        return size
    number, unit = match.groups()
    return number + {"": "", "k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti"}[unit]


def container_info(name: str, pod: dict[str, Any]) -> ContainerInfo:
    """What the core reads back about a sandbox, from its pod: ended (with why) is not gone;
    deleted, evicted or lost with its node is."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    annotations: dict[str, str] = metadata.get("annotations") or {}
    containers = status.get("containerStatuses") or [{}]
    state = containers[0].get("state") or {}
    terminated = state.get("terminated") or (containers[0].get("lastState") or {}).get("terminated")
    reason = status.get("reason", "")
    limits = (pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}
    return ContainerInfo(
        id=name,
        name=annotations.get(NAME_ANNOTATION, ""),
        labels={k: v for k, v in annotations.items() if k.startswith(LABEL_PREFIX)},
        running="running" in state,
        paused=False,
        oom_killed=bool(terminated and terminated.get("reason") == "OOMKilled"),
        # A pod whose container ended is Failed, not gone: why it ended is in its state.
        gone=bool(metadata.get("deletionTimestamp"))
        or reason in ("Evicted", "NodeLost", "Shutdown", "Terminated")
        or (status.get("phase") in ("Failed", "Succeeded") and not terminated),
        cpus=None,
        memory=int(limits["memory"]) if str(limits.get("memory", "")).isdigit() else None,
        pids=None,
        oci_runtime=pod["spec"].get("runtimeClassName"),
        network="host" if pod["spec"].get("hostNetwork") else "pod",
        evicted=reason == "Evicted",
    )


class KubernetesRuntime:
    """The `Runtime` on a Kubernetes namespace. Use `async with KubernetesRuntime.open(...)`."""

    name = "Kubernetes"
    attach_from_start = False
    """An attach sees only what a pod writes after it, and a pod runs as soon as it can: the
    link asks the agent to replay what came before (its hello)."""

    def __init__(
        self,
        client: KubeClient,
        nursery: trio.Nursery,
        *,
        host_network: bool,
        pull_policy: str,
        brought: agent_runtime.Bundle | None = None,
        runtime_dir: str | None = None,
    ) -> None:
        self._client = client
        self._nursery = nursery
        self._host_network = host_network
        self._pull_policy = pull_policy
        self._brought = brought
        """The runtime the agent runs on; None: the image's python3 (as before issue 31)."""
        self._runtime_dir = runtime_dir
        """Where nodes hold it (`stage`); None: it travels down the attach stream."""
        self._runtime_tar = (
            agent_runtime.archive(brought.files) if brought and runtime_dir is None else None
        )
        self._unsent: dict[str, bytes] = {}
        """Boot messages of pods made but not attached yet (a restarted server attaches to
        running agents only: it has none to send)."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        kubeconfig: Path | None,
        namespace: str | None,
        *,
        host_network: bool = False,
        pull_policy: str = "IfNotPresent",
        runtime_dir: str | None = None,
    ) -> AsyncIterator[KubernetesRuntime]:
        """`runtime_dir`: the nodes' folder of staged runtimes (`stage`), else the runtime is
        sent to each pod."""
        client = KubeClient.from_config(kubeconfig, namespace)
        try:
            async with trio.open_nursery() as nursery:
                brought = await trio.to_thread.run_sync(agent_runtime.bundle)
                runtime = cls(
                    client,
                    nursery,
                    host_network=host_network,
                    pull_policy=pull_policy,
                    brought=brought,
                    runtime_dir=runtime_dir or None,
                )
                await client.request("GET", client.path("pods"), params={"limit": "1"})
                try:
                    yield runtime
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    def _start(self, spec: ContainerSpec) -> tuple[list[str], dict[str, str], list[Any]]:
        """How the pod's container starts the agent: its command, the agent's settings, and
        the volumes beside the agent's own. On the brought runtime, as on Docker, unless the
        template names an interpreter of the image's (`python`)."""
        brought = self._brought if spec.python == DEFAULT_PYTHON else None
        if brought is None:
            return [spec.python, "-I", "-S", "-c", BOOTSTRAP], {}, []
        loader = agent_runtime.interpreter_command(brought.loader)
        settings = {
            agent_runtime.LOADER_ENV: brought.loader,
            agent_runtime.PYTHON_ENV: spec.python,
            **dict.fromkeys(LOADER_VARIABLES, ""),
        }
        program = bootstrap(AGENT_DIR, AGENT_PATH, run=loader)
        if self._runtime_dir is None:
            shell = shell_bootstrap(AGENT_DIR, loader)
            return ["/bin/sh", "-c", shell, "insien-boot", program], settings, []
        staged = {
            "name": "runtime",
            # No `type: Directory`: a node without it would leave the pod waiting for its
            # mount; with none, its container cannot start and the create fails at once.
            "hostPath": {"path": staged_dir(self._runtime_dir, brought)},
        }
        return [*loader, "-I", "-S", "-c", program], settings, [staged]

    def _pod(self, spec: ContainerSpec, name: str) -> dict[str, Any]:
        limits: dict[str, str] = {}
        if spec.mem_limit:
            limits["memory"] = str(spec.mem_limit)
        if spec.nano_cpus:
            limits["cpu"] = f"{max(1, spec.nano_cpus // 1_000_000)}m"
        if spec.disk_limit:  # the kubelet evicts a pod that writes past it
            limits["ephemeral-storage"] = _quantity(spec.disk_limit)
        requests = {"cpu": "50m", "memory": str(min(spec.mem_limit or 1 << 27, 1 << 27))}
        command, settings, staged = self._start(spec)
        mounts: list[dict[str, Any]] = [{"name": "agent", "mountPath": AGENT_DIR}]
        if staged:
            mounts.append(
                {"name": "runtime", "mountPath": agent_runtime.RUNTIME_DIR, "readOnly": True}
            )
        pod_spec: dict[str, Any] = {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "hostNetwork": self._host_network,
            "containers": [
                {
                    "name": "agent",
                    "image": spec.image,
                    "imagePullPolicy": self._pull_policy,
                    # As on Docker: nothing of the image decides how the root agent starts.
                    "command": command,
                    "args": [],
                    "workingDir": spec.workdir,
                    "env": [
                        {"name": k, "value": v}
                        for k, v in {**AGENT_ENVIRONMENT, **spec.environment, **settings}.items()
                    ],
                    "stdin": True,
                    "stdinOnce": False,
                    "tty": False,
                    "resources": {"limits": limits, "requests": requests},
                    "securityContext": {
                        "runAsUser": 0,  # the agent drops to the sandbox user for user code
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"], "add": list(spec.capabilities)},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [
                # The runtime's tar and what it unpacks to pass through here when it travels.
                {"name": "agent", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {
                    "name": "tmp",
                    "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(spec.tmp_size)},
                },
                *staged,
            ],
        }
        if spec.runtime:
            pod_spec["runtimeClassName"] = spec.runtime
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": {
                    LABEL_INSTANCE: spec.labels[LABEL_INSTANCE],
                    LABEL_SANDBOX_ID: spec.sandbox_id,
                },
                "annotations": {**spec.labels, NAME_ANNOTATION: ""},
            },
            "spec": pod_spec,
        }

    async def create(self, spec: ContainerSpec, agent_zip: bytes) -> str:
        name = POD_PREFIX + spec.sandbox_id
        pod = self._pod(spec, name)
        await self._client.request("POST", self._client.path("pods"), json=pod)
        travels = self._runtime_tar is not None and spec.python == DEFAULT_PYTHON
        self._unsent[name] = boot_message(agent_zip, self._runtime_tar if travels else None)
        return name

    async def _started(self, name: str) -> bool:
        """Whether the pod's agent container runs (RuntimeFailure if it never will)."""
        pod = await self._client.request("GET", self._client.path("pods", name))
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            if "running" in state:
                return True
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in STUCK:
                raise RuntimeFailure(f"{waiting['reason']}: {waiting.get('message', '')}")
            if "terminated" in state:
                reason = state["terminated"].get("reason", "terminated")
                raise RuntimeFailure(f"the sandbox's container ended at start: {reason}")
        if status.get("phase") in ("Failed", "Succeeded"):
            raise RuntimeFailure(f"the sandbox's pod is {status['phase']}")
        for condition in status.get("conditions") or []:
            # A sandbox is wanted now: waiting for a node to be added or freed is the
            # caller's choice (retry), not a create that hangs for minutes.
            if condition.get("type") == "PodScheduled" and condition.get("reason") == UNSCHEDULABLE:
                raise RuntimeFailure(f"no node can run the sandbox: {condition.get('message', '')}")
        return False

    async def attach(self, container_id: str) -> KubeChannel:
        """Attach as soon as the kubelet runs the container. The API server's pod status says
        so up to a second later (the kubelet notices containers by relisting them every
        second), so attaching is tried at once and again until it works or the pod fails (or,
        running, still refuses after `RUNNING_ATTACH_GRACE`)."""
        path = self._client.path("pods", container_id) + "/attach"
        channel: KubeChannel | None = None
        refused_since_running: float | None = None
        with trio.move_on_after(START_TIMEOUT):
            while channel is None:
                try:
                    channel = await self._nursery.start(run_channel, self._client.http, path)
                except RuntimeFailure:
                    if await self._started(container_id):
                        now = trio.current_time()
                        if refused_since_running is None:
                            refused_since_running = now
                        elif now - refused_since_running > RUNNING_ATTACH_GRACE:
                            raise  # running, and still refused after the grace: an answer
                    await trio.sleep(ATTACH_RETRY)
        if channel is None:
            raise RuntimeFailure(f"the sandbox's pod did not run within {START_TIMEOUT:g}s")
        message = self._unsent.pop(container_id, None)
        if message is not None:  # a pod this runtime made: its bootstrap waits for the agent
            await channel.send_all(message)
        return channel

    async def start(self, container_id: str) -> None:
        """A pod starts by itself; `attach` waited for it."""

    async def remove(self, container_id: str) -> None:
        self._unsent.pop(container_id, None)
        try:
            await self._client.request(
                "DELETE",
                self._client.path("pods", container_id),
                params={"gracePeriodSeconds": "0"},
            )
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def rename(self, container_id: str, name: str) -> None:
        await self._client.request(
            "PATCH",
            self._client.path("pods", container_id),
            json={"metadata": {"annotations": {NAME_ANNOTATION: name}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

    async def inspect(self, container_id: str) -> ContainerInfo | None:
        try:
            pod = await self._client.request("GET", self._client.path("pods", container_id))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return container_info(container_id, pod)

    async def list_sandboxes(self, instance: str) -> list[str]:
        found = await self._client.request(
            "GET",
            self._client.path("pods"),
            params={"labelSelector": f"{LABEL_INSTANCE}={instance}"},
        )
        return [str(item["metadata"]["name"]) for item in found.get("items") or []]
