"""How a pod gets the runtime the agent runs on (issue 31): the shell bootstrap that reads it
from stdin, on the host's /bin/sh and on busybox's (whose `head -c` reads ahead and would have
swallowed the agent), and the pod a create asks for when it travels or is staged on nodes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipapp
from pathlib import Path
from typing import cast

import pytest
import trio

from insien.runtime import agent_runtime
from insien.runtime.base import ContainerSpec
from insien.runtime.kubernetes.client import KubeClient
from insien.runtime.kubernetes.runtime import (
    KubernetesRuntime,
    boot_message,
    bootstrap,
    shell_bootstrap,
    staged_dir,
)
from insien.runtime.kubernetes.stage import stage

BUSYBOX = Path("/tmp/insien-test-debs/busybox-static/bin/busybox")
TOOLS = ("sh", "dd", "sha256sum", "tar", "chmod", "rm")


def shells(tmp: Path) -> list[tuple[str, dict[str, str]]]:
    """The host's /bin/sh with its PATH, and busybox's with nothing but its applets."""
    found = [("/bin/sh", {"PATH": "/usr/bin:/bin"})]
    if BUSYBOX.is_file():  # fetched by tests/e2e/test_any_image.py
        applets = tmp / "busybox"
        applets.mkdir()
        for tool in TOOLS:
            (applets / tool).symlink_to(BUSYBOX)
        found.append((str(applets / "sh"), {"PATH": str(applets)}))
    return found


def boot(
    tmp: Path, sh: str, env: dict[str, str], stdin: bytes
) -> subprocess.CompletedProcess[bytes]:
    """The two stages as a pod runs them, with the runtime unpacked into `tmp/volume`."""
    volume = tmp / "volume"
    shutil.rmtree(volume, ignore_errors=True)
    volume.mkdir(mode=0o777)
    os.chmod(volume, 0o777)
    loader = [
        f"{volume}/rt/lib/ld-linux-x86-64.so.2",
        "--inhibit-cache",
        "--library-path",
        f"{volume}/rt/lib",
        f"{volume}/rt/bin/python3",
    ]
    program = bootstrap(str(volume), str(volume / "agent.pyz"), run=loader)
    return subprocess.run(
        [sh, "-c", shell_bootstrap(str(volume), loader), "insien-boot", program],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def made() -> agent_runtime.Bundle:
    found = agent_runtime.bundle()
    if found is None:
        pytest.skip("this host cannot make the agent's runtime")
    return found


def test_the_shell_bootstrap_unpacks_the_runtime_and_runs_the_agent_on_it(
    tmp_path: Path, made: agent_runtime.Bundle
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "__main__.py").write_text(
        "import sys\nprint('agent on', sys.executable, 'then', sys.stdin.readline().strip())\n"
    )
    zipapp.create_archive(source, tmp_path / "app.pyz")
    agent = (tmp_path / "app.pyz").read_bytes()
    message = boot_message(agent, agent_runtime.archive(made.files))
    for sh, env in shells(tmp_path):
        done = boot(tmp_path, sh, env, message + b"the first request\n")
        volume = tmp_path / "volume"
        # Nothing of what follows the agent was read by the stages before it.
        assert done.stdout.decode() == (
            f"agent on {volume}/rt/bin/python3 then the first request\n"
        ), (sh, done.stderr)
        assert not (volume / "rt.tar").exists()
        python = (volume / "rt" / "bin" / "python3").stat()
        assert (python.st_uid, stat.S_IMODE(python.st_mode) & 0o022) == (os.getuid(), 0)

        agent_only = boot_message(agent)
        damaged = bytearray(message)
        damaged[len(message) // 3] ^= 1
        for stdin in (bytes(damaged), agent_only, b'{"type": "resume"}\n', message[:5000], b""):
            refused = boot(tmp_path, sh, env, stdin)
            assert refused.returncode != 0, (sh, stdin[:40])
            assert b"agent on" not in refused.stdout
            assert not (volume / "agent.pyz").exists()


def spec(python: str = "/usr/bin/python3") -> ContainerSpec:
    return ContainerSpec(
        sandbox_id="abc",
        image="busybox:static",
        labels={"insien.instance": "one"},
        python=python,
        capabilities=("SETUID",),
    )


def test_the_pod_when_the_runtime_travels_or_is_staged(made: agent_runtime.Bundle) -> None:
    def runtime(runtime_dir: str | None) -> KubernetesRuntime:
        return KubernetesRuntime(
            cast(KubeClient, None),
            cast(trio.Nursery, None),
            host_network=False,
            pull_policy="Never",
            brought=made,
            runtime_dir=runtime_dir,
        )

    travels = runtime(None)._pod(spec(), "insien-abc")["spec"]
    (container,) = travels["containers"]
    assert container["command"][:2] == ["/bin/sh", "-c"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["INSIEN_AGENT_LOADER"] == made.loader
    assert (env["LD_PRELOAD"], env["LD_AUDIT"]) == ("", "")  # not the image's, for the loader
    assert not [v for v in travels["volumes"] if "hostPath" in v]

    staged = runtime("/var/lib/insien/agent-runtime")._pod(spec(), "insien-abc")["spec"]
    (container,) = staged["containers"]
    assert container["command"][: len(made.command("x")) - 3] == made.command("x")[:-3]
    (volume,) = [v for v in staged["volumes"] if "hostPath" in v]
    assert volume["hostPath"]["path"] == staged_dir("/var/lib/insien/agent-runtime", made)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert (mount["mountPath"], mount["readOnly"]) == (agent_runtime.RUNTIME_DIR, True)

    # A template naming the image's own interpreter runs the agent on it, as before.
    own = runtime(None)._pod(spec("/usr/local/bin/python3"), "insien-abc")["spec"]
    assert own["containers"][0]["command"][0] == "/usr/local/bin/python3"


def test_staging_writes_a_read_only_folder_once(tmp_path: Path, made: agent_runtime.Bundle) -> None:
    target = stage(tmp_path / "runtimes", made)
    assert target == Path(staged_dir(str(tmp_path / "runtimes"), made))
    python = target / "bin" / "python3"
    assert stat.S_IMODE(python.stat().st_mode) == 0o555
    assert stat.S_IMODE((target / "lib").stat().st_mode) == 0o755
    assert not [p for p in target.rglob("*") if p.is_file() and p.stat().st_mode & 0o222]
    assert stage(tmp_path / "runtimes", made) == target  # there already: left as it is
    assert [p.name for p in (tmp_path / "runtimes").iterdir()] == [target.name]
