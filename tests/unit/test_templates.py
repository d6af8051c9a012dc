"""Template builds' translation (sandboxes/templates.py), without Docker: E2B's steps become a
Dockerfile no step can add an instruction to, and uploaded files reach the build context only
inside their own folder, without set-id bits."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from insien.config import Settings
from insien.sandboxes.errors import NotSupported
from insien.sandboxes.snapshots import Snapshots
from insien.sandboxes.templates import (
    Recipe,
    Step,
    TemplateBuilds,
    TemplateError,
    dockerfile,
    split_name,
    write_context,
)
from insien.tenancy.tenants import Tenant
from tests.fake_runtime import FakeRuntime

HASH = "a" * 64


def test_steps_become_instructions_with_their_users_and_steps() -> None:
    recipe = Recipe(
        steps=(
            Step("RUN", ("echo hi > /home/user/built",)),
            Step("RUN", ("apt-get update", "root")),
            Step("COPY", ("app/*.py", "/app/", "", "0755"), HASH),
            Step("ENV", ("A", "1", "B", 'two "2" $HOME \\')),
            Step("USER", ("root",)),
            Step("WORKDIR", ("/app",)),
            Step("RUN", ("make",)),
        )
    )
    plan = dockerfile("insien-sandbox:latest", recipe, {"OLD": "kept"})
    assert plan.text.splitlines() == [
        "FROM insien-sandbox:latest",
        "USER user",
        'RUN ["/bin/sh", "-c", "echo hi > /home/user/built"]',
        "USER root",
        'RUN ["/bin/sh", "-c", "apt-get update"]',
        # a glob's matches are the upload: their folder is copied (symlinks as they are)
        'COPY --chown=user ["files/2/app/", "/app/"]',
        'ENV A="1" B="two \\"2\\" \\$HOME \\\\"',
        "WORKDIR /app",
        'RUN ["/bin/sh", "-c", "make"]',
    ]
    # each instruction names the E2B step it came from (a failed one is reported by it)
    assert plan.steps == ["base", "1", "1", "2", "2", "3", "4", "6", "7"]
    assert plan.copies == [(2, HASH, 0o755)]
    assert plan.envs == {"OLD": "kept", "A": "1", "B": 'two "2" $HOME \\'}


def test_no_step_adds_an_instruction_of_its_own() -> None:
    injected = "true\nLABEL insien.snapshot.owner=someone-else"
    plan = dockerfile("base", Recipe(steps=(Step("RUN", (injected,)),)), {})
    assert plan.text.count("\n") == 3  # FROM, USER, RUN
    assert json.dumps(injected) in plan.text
    for step in (
        Step("ENV", ("A", "x\nLABEL a=b")),
        Step("ENV", ("BAD NAME", "x")),
        Step("ENV", ("INSIEN_AGENT_TOKEN", "x")),
        Step("WORKDIR", ("/x\nUSER root",)),
        Step("WORKDIR", ("relative",)),
        Step("USER", ("root\nRUN id",)),
        Step("RUN", ("id", "root --chown")),
        Step("COPY", ("../../etc/passwd", "/x"), HASH),
        Step("COPY", ("/etc/passwd", "/x"), HASH),
        Step("COPY", ("a", "/x\nRUN id"), HASH),
        Step("COPY", ("a", "/x"), "not-a-hash"),
        Step("ADD", ("http://example.com/x", "/x")),
    ):
        with pytest.raises(TemplateError):
            dockerfile("base", Recipe(steps=(step,)), {})


def test_names_and_tags() -> None:
    assert split_name("my-template") == ("my-template", None)
    assert split_name("team/my-template:v1.2") == ("my-template", "v1.2")
    for bad in ("", "-x", "a b", "x:", "x:a b", "x:" + "t" * 200):
        with pytest.raises(TemplateError):
            split_name(bad)


def _upload(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = b"data of " + name.encode()
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            for key, value in fields.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("ok.txt", mode=0o4755, uid=0)
        add("dir", tarfile.DIRTYPE, mode=0o755)
        add("dir/inner.txt", mode=0o644)
        add("../escape.txt")
        add("/abs.txt")
        add("dev", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("link", tarfile.SYMTYPE, linkname="/etc/shadow")
        add("hard", tarfile.LNKTYPE, linkname="dir/inner.txt")
        add("hard-out", tarfile.LNKTYPE, linkname="../../etc/shadow")


def test_uploads_stay_in_their_folder_without_set_id_bits(tmp_path: Path) -> None:
    upload = tmp_path / "upload.tar.gz"
    _upload(upload)
    out = io.BytesIO()
    write_context(out, "FROM base\n", [(3, upload, None), (5, upload, 0o600)])
    out.seek(0)
    with tarfile.open(fileobj=out) as context:
        members = {m.name: m for m in context.getmembers()}
        dockerfile_member = context.extractfile("Dockerfile")
        assert dockerfile_member is not None
        assert dockerfile_member.read() == b"FROM base\n"
    kept = ("ok.txt", "dir", "dir/inner.txt", "link", "hard")  # no escape, device, outside link
    assert set(members) == {
        "Dockerfile",
        "files/3",
        "files/5",
        *(f"files/{n}/{name}" for n in (3, 5) for name in kept),
    }
    assert members["files/3/ok.txt"].mode == 0o755  # the set-user-id bit is gone
    assert members["files/5/ok.txt"].mode == 0o600  # COPY's mode
    assert members["files/5/dir"].mode == 0o755  # folders keep theirs
    assert members["files/3/hard"].linkname == "files/3/dir/inner.txt"
    assert members["files/3/link"].linkname == "/etc/shadow"  # a link, resolved in the image


async def test_a_runtime_that_cannot_build_refuses_clearly(tmp_path: Path) -> None:
    """Kubernetes (any runtime without `ImageBuilder`): a build is NOT_SUPPORTED (501), and
    nothing resolves to a template there."""
    runtime = FakeRuntime()
    settings = Settings(state_dir=tmp_path)
    builds = TemplateBuilds(
        runtime, settings, Snapshots(runtime, settings, lambda _: True), lambda _: None
    )
    tenant = Tenant("someone")
    with pytest.raises(NotSupported, match="building a template is not available on Fake"):
        await builds.request(tenant, "mine", [])
    assert await builds.image_for(tenant, "mine") is None
    assert await builds.exists(tenant, "mine") is None
    assert not await builds.delete(tenant, "mine")
