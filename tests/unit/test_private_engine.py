"""Where `insien serve` gets its Docker Engine when the configured one does not answer: a
private dockerd (root, dockerd installed, a local socket), or one line saying what to install
or start. The machine is faked: no engine is started here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from insien.runtime.docker import engine
from insien.runtime.docker.engine import (
    EngineUnavailable,
    Host,
    PrivateDockerd,
    Refuse,
    SocketState,
    StartPrivate,
    UseConfigured,
    decide,
)


def host(
    *,
    error: str | None = "Error while fetching server API version: ('Connection aborted.', …)",
    docker_host: str | None = None,
    socket_state: SocketState = "missing",
    dockerd: str | None = "/usr/sbin/dockerd",
    root: bool = True,
) -> Host:
    return Host(
        docker_host=docker_host, error=error, socket_state=socket_state, dockerd=dockerd, root=root
    )


def message(plan: object) -> str:
    assert isinstance(plan, Refuse), plan
    assert "\n" not in plan.message
    assert "Connection aborted" not in plan.message  # docker-py's text is not the advice
    return plan.message


def test_an_engine_that_answers_is_used_as_it_is() -> None:
    assert decide(host(error=None), allow_private=True) == UseConfigured()
    assert decide(host(error=None, dockerd=None, root=False), True) == UseConfigured()


def test_root_with_dockerd_starts_a_private_one_for_a_local_socket() -> None:
    assert decide(host(), allow_private=True) == StartPrivate("/usr/sbin/dockerd")
    missing = host(docker_host="unix:///run/missing.sock")
    assert decide(missing, allow_private=True) == StartPrivate("/usr/sbin/dockerd")
    stale = host(socket_state="present")  # a socket a dead dockerd left behind
    assert decide(stale, allow_private=True) == StartPrivate("/usr/sbin/dockerd")


def test_root_that_refuses_a_private_one_is_told_to_start_dockerd() -> None:
    said = message(decide(host(), allow_private=False))
    assert said.startswith("no Docker Engine answers at /var/run/docker.sock")
    assert "start dockerd" in said


def test_without_dockerd_the_advice_is_to_install_it() -> None:
    for root in (True, False):
        said = message(decide(host(dockerd=None, root=root), allow_private=True))
        assert "dockerd is not installed" in said
        assert "apt-get install docker.io" in said
        assert "start dockerd" in said


def test_a_user_who_may_not_use_the_socket_is_told_about_the_docker_group() -> None:
    said = message(decide(host(root=False, socket_state="denied"), allow_private=True))
    assert "docker group" in said
    assert "usermod -aG docker" in said


def test_a_user_without_a_running_engine_is_told_to_start_it() -> None:
    said = message(decide(host(root=False), allow_private=True))
    assert "sudo systemctl start docker" in said
    assert "as root" in said


def test_a_remote_engine_is_never_replaced_by_a_local_one() -> None:
    remote = host(docker_host="tcp://127.0.0.1:2376", socket_state="remote", error="refused")
    said = message(decide(remote, allow_private=True))
    assert said == "cannot reach the Docker Engine at DOCKER_HOST=tcp://127.0.0.1:2376: refused"


def test_survey_sees_a_missing_socket_and_who_we_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    seen = engine.survey()
    assert seen.error is not None
    assert seen.socket_state == "missing"
    assert seen.dockerd is None
    assert not seen.root
    assert seen.docker_host == f"unix://{tmp_path}/docker.sock"


def test_serve_without_an_engine_stops_with_the_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("shutil.which", lambda name: None)
    said: list[str] = []
    with (
        pytest.raises(EngineUnavailable, match=r"install docker\.io"),
        engine.engine_for_serve(allow_private=True, say=said.append),
    ):
        pytest.fail("no engine, yet the service would run")
    assert said == []
    assert not (tmp_path / "insien").exists()


def test_the_private_dockerd_keeps_to_its_own_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/someone")
    home = engine.private_home()
    assert home == Path("/var/cache/someone/insien/dockerd")
    private = PrivateDockerd("/usr/sbin/dockerd", home)
    whole = private.command()
    # in a network namespace of its own: a dockerd without a bridge deletes the host's docker0
    assert whole[1 : whole.index("/usr/sbin/dockerd")] == ["--net", "--"]
    assert Path(whole[0]).name == "unshare"
    command = whole[whole.index("/usr/sbin/dockerd") :]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--data-root"] == f"{home}/data"
    assert flags["--exec-root"] == f"{home}/exec"
    assert flags["--pidfile"] == f"{home}/dockerd.pid"
    assert flags["--host"] == f"unix://{home}/docker.sock"
    # Its own config file, so /etc/docker/daemon.json (the system engine's) never applies.
    assert flags["--config-file"] == f"{home}/daemon.json"
    # The system engine's bridge, iptables rules and containerd namespace are left alone.
    for flag in (
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--containerd-namespace=insien-private",
        "--containerd-plugins-namespace=insien-private-plugins",
    ):
        assert flag in command


def test_runsc_is_registered_as_ci_registers_it() -> None:
    assert PrivateDockerd.config(None) == {}
    config = PrivateDockerd.config("/usr/bin/runsc")
    assert config == {
        "runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}
    }
    ci = Path(__file__).parent.parent.parent / ".ci" / "run"
    registered = next(
        line for line in ci.read_text().splitlines() if line.startswith("RUNSC_RUNTIME=")
    )
    assert json.loads(registered.split("=", 1)[1].strip("'")) == config["runtimes"]["runsc"]


def test_a_cache_dir_too_deep_for_sockets_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 120)
    private = PrivateDockerd("/usr/sbin/dockerd", deep)
    with pytest.raises(EngineUnavailable, match="XDG_CACHE_HOME"), private.running(print):
        pytest.fail("started")
    assert not deep.exists()
