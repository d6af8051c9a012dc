"""E2B's template builder as the stock `e2b` Python SDK drives it (issue 29): `Template()` steps
(run_cmd, copy of a local file, set_envs, set_workdir, make_symlink) built with
`Template.build`, a sandbox created from the alias sees the files and the environment; names
and tags; another tenant neither sees nor uses the template; a base that is not on the engine
and a failing step fail the build with their reason; a plan's snapshot quota counts builds;
delete."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
from e2b import BuildException, RateLimitException, Sandbox, Template, wait_for_file
from e2b.template.logger import LogEntry
from e2b.template.main import TemplateBuilder

from insien.tenancy.tenants import hash_key, new_key
from tests.conftest import Server, start_server, stop_server

pytestmark = pytest.mark.docker

PLANS = {"builder": "", "other": "", "small": "max_snapshots = 1"}


@dataclass
class Setup:
    server: Server
    keys: dict[str, str]
    context: Path

    def delete(self, name: str, template: str) -> httpx.Response:
        return httpx.delete(
            f"{self.server.url}/e2b/templates/{template}",
            headers={"X-API-Key": self.keys[name]},
            timeout=60,
        )


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("templates")
    keys = {name: new_key() for name in PLANS}
    tenants = folder / "tenants.toml"
    tenants.write_text(
        "\n".join(
            f'[tenants.{name}]\n{plan}\nkeys = [{{ id = "{name}-key", '
            f'sha256 = "{hash_key(keys[name])}" }}]\n'
            for name, plan in PLANS.items()
        )
    )
    context = folder / "context"
    context.mkdir()
    (context / "data.txt").write_text("copied from the build context\n")
    # A folder copied by a glob, with symlinks of every kind (E2B's own build test).
    (context / "folder").mkdir()
    (context / "folder" / "test.txt").write_text("in the folder\n")
    (context / "folder" / "relative.txt").symlink_to("test.txt")
    (context / "folder" / "absolute.txt").symlink_to(context / "folder" / "test.txt")
    (context / "folder" / "dangling.txt").symlink_to("12345test.txt")
    process, server = start_server(
        {"INSIEN_TENANTS_FILE": str(tenants), "INSIEN_API_KEY": ""}, suffix="templates"
    )
    old = os.environ.get("E2B_API_URL")
    os.environ["E2B_API_URL"] = f"{server.url}/e2b"
    os.environ["E2B_SANDBOX_URL"] = f"{server.url}/e2b"
    try:
        yield Setup(server, keys, context)
    finally:
        if old is None:
            os.environ.pop("E2B_API_URL", None)
        os.environ.pop("E2B_SANDBOX_URL", None)
        assert stop_server(process) == 0
        for image in docker_client.images.list(name="insien-snapshot"):
            if image.labels.get("insien.snapshot.owner") in PLANS:
                docker_client.images.remove(str(image.id), force=True)


def _alias() -> str:
    return f"tpl-{uuid.uuid4().hex[:10]}"


def _recipe(setup: Setup) -> TemplateBuilder:
    return (
        Template(file_context_path=setup.context)
        .from_template("base")
        .run_cmd("echo hi > /home/user/built")
        .copy("data.txt", "/home/user/")
        .copy("folder/*", "/home/user/folder")
        .set_envs({"GREETING": 'hello "there" $HOME'})
        .set_workdir("/home/user")
        .run_cmd('cat data.txt > copied && echo "$GREETING" > greeting')
        .make_symlink("/home/user/built", "/home/user/built-link")
        # build steps run as root with no egress policy: by default they get no network
        .run_cmd("ls /sys/class/net > /home/user/interfaces")
    )


@pytest.fixture(scope="module")
def built(setup: Setup) -> str:
    alias = _alias()
    logs: list[LogEntry] = []
    info = Template.build(
        _recipe(setup), alias, api_key=setup.keys["builder"], on_build_logs=logs.append
    )
    assert info.alias == alias
    assert any("echo hi" in entry.message for entry in logs), [e.message for e in logs]
    return alias


def test_a_built_template_starts_sandboxes_with_its_files_and_environment(
    setup: Setup, built: str
) -> None:
    sandbox = Sandbox.create(built, api_key=setup.keys["builder"])
    try:
        run = sandbox.commands.run(
            'cat built copied greeting built-link; echo "$GREETING"; stat -c %U data.txt',
            cwd="/home/user",
        )
        assert run.stdout.splitlines() == [
            "hi",
            "copied from the build context",
            # ENV's value reached the build's steps exactly: quotes kept, $HOME not expanded
            'hello "there" $HOME',
            "hi",
            'hello "there" $HOME',
            "user",  # COPY gives the files to the step's user, as E2B does
        ]
        # The glob's matches landed in the folder, symlinks as they were (a relative one
        # resolves; the absolute and dangling ones are kept, leading where they led).
        copied = sandbox.commands.run(
            "cat folder/test.txt folder/relative.txt; readlink folder/relative.txt"
            " folder/dangling.txt; test -L folder/absolute.txt && echo link",
            cwd="/home/user",
        )
        assert copied.stdout.splitlines() == [
            "in the folder",
            "in the folder",
            "test.txt",
            "12345test.txt",
            "link",
        ]
        assert Sandbox.get_info(sandbox.sandbox_id, api_key=setup.keys["builder"]).template_id
        # INSIEN_BUILD_NETWORK is off: the build's steps saw no interface but loopback
        assert sandbox.files.read("/home/user/interfaces").split() == ["lo"]
    finally:
        sandbox.kill()


def test_names_are_the_tenants_own(setup: Setup, built: str) -> None:
    assert Template.exists(built, api_key=setup.keys["builder"])
    assert not Template.exists(f"{built}-missing", api_key=setup.keys["builder"])
    # another tenant neither sees the name nor creates from it
    assert not Template.exists(built, api_key=setup.keys["other"])
    # the operator's templates are everyone's, as E2B's public ones (E2B's own SDK test)
    assert Template.exists("base", api_key=setup.keys["other"])
    with pytest.raises(Exception, match=r"not allowed|not found"):
        Sandbox.create(built, api_key=setup.keys["other"])
    tags = Template.get_tags(built, api_key=setup.keys["builder"])
    assert [t.tag for t in tags] == ["default"]
    with pytest.raises(Exception, match="not found"):
        Template.get_tags(built, api_key=setup.keys["other"])
    # nor does it list among the tenant's snapshots
    listed = httpx.get(
        f"{setup.server.url}/e2b/snapshots", headers={"X-API-Key": setup.keys["builder"]}
    )
    assert listed.status_code == 200
    assert listed.json() == []


def test_tags_name_builds_and_a_rebuild_is_cached(setup: Setup, built: str) -> None:
    key = setup.keys["builder"]
    logs: list[LogEntry] = []
    Template.build(_recipe(setup), f"{built}:v2", api_key=key, on_build_logs=logs.append)
    assert any("Using cache" in entry.message for entry in logs)  # unchanged steps are cached
    assert sorted(t.tag for t in Template.get_tags(built, api_key=key)) == ["default", "v2"]
    Template.assign_tags(f"{built}:v2", "stable", api_key=key)
    sandbox = Sandbox.create(f"{built}:stable", api_key=key)
    try:
        assert sandbox.commands.run("cat /home/user/built").stdout == "hi\n"
    finally:
        sandbox.kill()
    Template.remove_tags(built, ["stable", "v2"], api_key=key)
    assert [t.tag for t in Template.get_tags(built, api_key=key)] == ["default"]


def test_a_base_the_engine_lacks_fails_clearly(setup: Setup) -> None:
    template = Template().from_image("registry.example/nothing-here:1").run_cmd("true")
    with pytest.raises(BuildException, match="no registry is reachable"):
        Template.build(template, _alias(), api_key=setup.keys["builder"])
    someone_elses = Template().from_template("tpl-of-nobody").run_cmd("true")
    with pytest.raises(BuildException, match="not found"):
        Template.build(someone_elses, _alias(), api_key=setup.keys["builder"])


def test_a_failing_step_fails_the_build_with_its_output(setup: Setup) -> None:
    alias = _alias()
    template = (
        Template().from_template("base").run_cmd("echo before").run_cmd("echo broken >&2; exit 3")
    )
    logs: list[LogEntry] = []
    with pytest.raises(BuildException, match="returned a non-zero code: 3"):
        Template.build(
            template,
            alias,
            api_key=setup.keys["builder"],
            on_build_logs=logs.append,
        )
    assert any("broken" in entry.message for entry in logs)
    assert not Template.exists(alias, api_key=setup.keys["builder"])


def test_builds_count_against_the_snapshot_quota(setup: Setup) -> None:
    key = setup.keys["small"]
    alias = _alias()
    template = Template().from_template("base").run_cmd("echo one > /home/user/one")
    Template.build(template, alias, api_key=key)
    Template.build(template, alias, api_key=key)  # a rebuild replaces
    with pytest.raises(RateLimitException, match="at most 1"):  # 429, as snapshots
        Template.build(template, _alias(), api_key=key)
    assert setup.delete("small", alias).status_code == 204
    Template.build(template, _alias(), api_key=key)


def test_only_its_tenant_deletes_a_template(setup: Setup) -> None:
    alias = _alias()
    template = Template().from_template("base").run_cmd("echo gone > /home/user/gone")
    Template.build(template, alias, api_key=setup.keys["builder"])
    assert setup.delete("other", alias).status_code == 404
    assert Template.exists(alias, api_key=setup.keys["builder"])
    assert setup.delete("builder", alias).status_code == 204
    assert not Template.exists(alias, api_key=setup.keys["builder"])
    with pytest.raises(Exception, match=r"not allowed|not found"):
        Sandbox.create(alias, api_key=setup.keys["builder"])


def test_only_the_api_key_reaches_the_builder(setup: Setup) -> None:
    """A sandbox's tokens (envd's, traffic's) are not keys: the builder refuses them."""
    sandbox = Sandbox.create(api_key=setup.keys["builder"])
    try:
        api = f"{setup.server.url}/e2b"
        tokens = {
            "X-Access-Token": sandbox._envd_access_token or "",
            "E2B-Traffic-Access-Token": sandbox.traffic_access_token or "",
        }
        assert all(tokens.values())
        for header, token in tokens.items():
            for method, path in (
                ("POST", "/v3/templates"),
                ("GET", "/templates/aliases/anything"),
                ("POST", "/templates/tags"),
                ("DELETE", "/templates/anything"),
            ):
                refused = httpx.request(
                    method, api + path, headers={header: token}, json={"name": "x"}
                )
                assert refused.status_code == 401, (header, path, refused.text)
    finally:
        sandbox.kill()


def test_a_start_command_runs_before_the_sandbox_is_handed_over(setup: Setup) -> None:
    key = setup.keys["builder"]
    alias = _alias()
    template = (
        Template()
        .from_template("base")
        .set_workdir("/home/user")
        .set_start_cmd(
            "sleep 1; echo started > ready-file; exec sleep 1000", wait_for_file("ready-file")
        )
    )
    Template.build(template, alias, api_key=key)
    sandbox = Sandbox.create(alias, api_key=key)
    try:
        # ready when create returns, and the program goes on running as the sandbox's user
        assert sandbox.commands.run("cat /home/user/ready-file").stdout == "started\n"
        running = sandbox.commands.run("ps -o user=,args= -C sleep").stdout
        assert "sleep 1000" in running
        assert running.split()[0] == "user"
    finally:
        sandbox.kill()


def test_a_template_that_never_gets_ready_fails_its_create(setup: Setup) -> None:
    key = setup.keys["builder"]
    alias = _alias()
    template = Template().from_template("base").set_start_cmd("sleep 1000", "test -e /nothing")
    Template.build(template, alias, api_key=key)
    with pytest.raises(Exception, match="ready command did not pass"):
        Sandbox.create(alias, api_key=key, timeout=3)
    # the sandbox that never got ready is gone
    assert Sandbox.list(api_key=key).next_items() == []


def test_a_server_stops_without_waiting_for_a_build(setup: Setup) -> None:
    """A build in progress does not hold the server's shutdown (the engine's build ends with
    the connection)."""
    key = new_key()
    tenants = setup.context.parent / "stopping.toml"
    tenants.write_text(f'[tenants.stopping]\nkeys = [{{ id = "k", sha256 = "{hash_key(key)}" }}]\n')
    process, server = start_server(
        {"INSIEN_TENANTS_FILE": str(tenants), "INSIEN_API_KEY": ""}, suffix="stopping"
    )
    try:
        template = Template().from_template("base").run_cmd(f"sleep 120 # {uuid.uuid4()}")
        info = Template.build_in_background(
            template, _alias(), api_key=key, api_url=f"{server.url}/e2b"
        )
        deadline = time.monotonic() + 60
        while "sleep 120" not in " ".join(
            e.message
            for e in Template.get_build_status(
                info, logs_offset=0, api_key=key, api_url=f"{server.url}/e2b"
            ).log_entries
        ):
            assert time.monotonic() < deadline, "the build never reached its sleep"
            time.sleep(0.2)
    finally:
        started = time.monotonic()
        assert stop_server(process, timeout=60) == 0
    assert time.monotonic() - started < 30
