"""Template builds: a tenant's own images, made from a base image and steps (E2B's v2 template
builder), kept as snapshots the tenant owns.

A build is a Dockerfile made from the steps (RUN, COPY of uploaded files, ENV, WORKDIR, USER)
on a base the tenant may use: the operator's templates, or one of its own templates or
snapshots. The runtime's `ImageBuilder` builds it (the Docker Engine's layer cache makes
unchanged steps immediate). The image is an `insien-snapshot:<hex>` carrying the snapshot
labels (owner, instance, bytes, the operator's template it descends from, whose isolation it
keeps), so creating from it, the plan's snapshot quota, listing, deleting and the purge of a
removed tenant's images all hold as they do for snapshots. A template's name (`alias`) and tags
are image names of their own, `insien-template-<templateID>:<tag>`, where the template id is a
digest of (instance, tenant, alias): two tenants' aliases never meet, and a tag moves to a new
build as E2B's do. Builds in progress, their logs and the upload links live in memory.

Long: recipe checking and Dockerfile writing, the build context, builds and their logs, names
and tags, uploads. Next seams, in that order: the recipe and Dockerfile (pure) into a module,
then uploads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import trio

from ..config import Settings
from ..link import AgentGone, AgentLink
from ..protocol import ErrorCode
from ..runtime.base import (
    BuildStepFailed,
    ImageBuild,
    ImageBuilder,
    ImageInfo,
    Runtime,
    RuntimeFailure,
)
from ..tenancy.quotas import QuotaExceeded
from ..tenancy.tenants import Tenant
from .errors import not_supported
from .snapshots import (
    SNAPSHOT_BASE_LABEL,
    SNAPSHOT_BYTES_LABEL,
    SNAPSHOT_INSTANCE_LABEL,
    SNAPSHOT_NAME_LABEL,
    SNAPSHOT_OWNER_LABEL,
    SNAPSHOT_REPOSITORY,
    SNAPSHOT_SOURCE_LABEL,
    Snapshots,
)

log = logging.getLogger("insien.templates")

TEMPLATE_REPOSITORY = "insien-template-"
TEMPLATE_ID_LABEL = "insien.template.id"
TEMPLATE_ALIAS_LABEL = "insien.template.alias"
TEMPLATE_BUILD_LABEL = "insien.template.build"
TEMPLATE_START_LABEL = "insien.template.start"
"""Its start and ready commands and the folder they run in (JSON), empty when it has none."""
TEMPLATE_ENV_LABEL = "insien.template.env"
"""The environment its ENV steps set (JSON): sandboxes of the template start with it, as the
runtime gives no image's environment to user code (`ContainerSpec`)."""
DEFAULT_TAG = "default"
DEFAULT_USER = "user"
"""Who runs a step that names no user, as on E2B (`run_cmd(..., user="root")` to change it)."""
ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
FILES_HASH = re.compile(r"[0-9a-f]{64}")
E2B_BASES = re.compile(r"(e2bdev/base|e2bdev/code-interpreter|debian)(:[A-Za-z0-9_.-]+)?")
"""E2B's own bases and Debian's images: here, the operator's default image (Debian's packages)."""
MAX_STEPS = 200
MAX_ARG = 64 * 1024
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_TENANT_UPLOAD_BYTES = 2 * 1024 * 1024 * 1024
MAX_CONTEXT_BYTES = 4 * 1024 * 1024 * 1024
"""What a build's uploads may hold unpacked (a small gzip can hold a great deal)."""
UPLOAD_LINK_SECONDS = 3600.0
MAX_BUILDS_KEPT = 64
"""Finished builds remembered per tenant (their status and logs); older ones are forgotten."""
MAX_LOG_ENTRIES = 10_000
CONCURRENT_BUILDS = 2
BUILD_MEMORY = 2 * 1024 * 1024 * 1024
BUILD_SECONDS = 1800.0
READY_SECONDS = 55.0
"""How long a create waits for a template's ready command to pass: within the SDKs' default
request timeout (60 s), so the caller sees why."""
READY_INTERVAL = 0.5
READY_COMMAND_SECONDS = 30.0


class TemplateError(Exception):
    """A build request this server cannot take (the message says why); `status` is HTTP's."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TemplateNotFound(TemplateError):
    def __init__(self, what: str) -> None:
        super().__init__(f"template {what!r} not found", 404)


@dataclass(frozen=True)
class LogEntry:
    timestamp: datetime
    message: str
    level: str = "info"
    step: str | None = None


@dataclass(frozen=True)
class Step:
    """One of E2B's build steps: `type` is COPY, RUN, ENV, WORKDIR or USER."""

    type: str
    args: tuple[str, ...]
    files_hash: str | None = None
    force: bool = False


@dataclass(frozen=True)
class Recipe:
    """What `POST /v2/templates/{id}/builds/{build}` asks for."""

    steps: tuple[Step, ...]
    from_image: str | None = None
    from_template: str | None = None
    registry: bool = False
    """Registry credentials came with it (`from_image(..., username=...)`, AWS, GCP)."""
    start_cmd: str | None = None
    ready_cmd: str | None = None
    force: bool = False


@dataclass(frozen=True)
class StartProgram:
    """What runs before a sandbox of the template is handed over: `start` in the background,
    then `ready` until it exits 0 (as the sandbox's user, in `cwd`)."""

    start: str | None
    ready: str | None
    cwd: str


async def run_program(
    link: AgentLink, program: StartProgram, seconds: float = READY_SECONDS
) -> None:
    """Start the template's program in a new sandbox and wait until its ready command passes;
    TemplateError (500) if it cannot start or is not ready within `seconds`."""
    try:
        if program.start:
            spawn = {"type": "spawn", "cmd": "/bin/sh", "args": ["-c", program.start]}
            async with link.request({**spawn, "cwd": program.cwd}) as pending:
                async for reply in pending:
                    if reply.message.get("type") == "spawnResponse":
                        break  # leaving stops following it; the process lives on
                    if reply.message.get("type") == "error":
                        raise TemplateError(
                            f"the template's start command did not start: "
                            f"{reply.message.get('message')}",
                            500,
                        )
        if not program.ready:
            return
        last = ""
        with trio.move_on_after(seconds):
            while True:
                check = {"type": "exec", "cmd": "/bin/sh", "args": ["-c", program.ready]}
                answer = await link.call(
                    {**check, "cwd": program.cwd, "timeout": READY_COMMAND_SECONDS}
                )
                if answer.get("type") == "execResponse" and answer.get("exitCode") == 0:
                    return
                said = answer.get("stderr") or answer.get("stdout") or answer.get("message")
                last = str(said or f"exit code {answer.get('exitCode')}").strip()[-500:]
                await trio.sleep(READY_INTERVAL)
    except AgentGone as exc:
        raise TemplateError(f"the sandbox ended while its template started: {exc}", 500) from None
    raise TemplateError(
        f"the template's ready command did not pass within {seconds:g} s ({last})", 500
    )


@dataclass
class Build:
    """One build of a template, from its request to its end."""

    build_id: str
    template_id: str
    owner: str
    alias: str
    tags: tuple[str, ...]
    status: str = "waiting"
    """E2B's: waiting (requested, or queued), building, ready, error."""
    entries: list[LogEntry] = field(default_factory=list)
    reason: str | None = None
    failed_step: str | None = None
    created: float = field(default_factory=time.time)

    def add(self, message: str, level: str = "info", step: str | None = None) -> None:
        if len(self.entries) < MAX_LOG_ENTRIES:
            self.entries.append(LogEntry(datetime.now(UTC), message, level, step))


@dataclass(frozen=True)
class TemplateTag:
    tag: str
    build_id: str
    created_at: datetime


@dataclass(frozen=True)
class Upload:
    owner: str
    template_id: str
    files_hash: str
    expires: float


def split_name(name: str) -> tuple[str, str | None]:
    """`alias` or `alias:tag` (a `namespace/` before it is ignored), checked."""
    name = name.rsplit("/", 1)[-1]
    alias, colon, tag = name.partition(":")
    if not ALIAS.fullmatch(alias) or (colon and not TAG.fullmatch(tag)):
        raise TemplateError(
            f"template name {name!r} is not `name` or `name:tag` (letters, digits, . _ -)"
        )
    return alias, tag if colon else None


def _env_line(envs: list[tuple[str, str]]) -> str:
    """An ENV instruction whose values reach the image exactly (quoted, `$` not expanded: the
    sandbox gets the same values from the image's label)."""
    parts = []
    for name, value in envs:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
        parts.append(f'{name}="{escaped}"')
    return "ENV " + " ".join(parts)


def _single_line(text: str, what: str) -> str:
    if "\n" in text or "\r" in text or "\x00" in text:
        raise TemplateError(f"{what} must be a single line")
    return text


def _user(name: str) -> str:
    if not USER.fullmatch(name):
        raise TemplateError(f"user {name!r} is not a user name")
    return name


@dataclass
class Dockerfile:
    """A recipe's steps as a Dockerfile: `steps[k]` says which of E2B's steps (`base`, `1`,
    `2`, …) the Dockerfile's instruction k+1 came from, so a failed instruction names it."""

    text: str
    base: str
    steps: list[str]
    copies: list[tuple[int, str, int | None]]
    """(index, files hash, mode) of each COPY step: its files go to `files/<index>/`."""
    envs: dict[str, str]
    build_args: dict[str, str]
    workdir: str | None = None
    """The last WORKDIR a step set: where the start and ready commands run."""


def dockerfile(base: str, recipe: Recipe, inherited_env: dict[str, str]) -> Dockerfile:
    """Translate E2B's steps; everything a tenant wrote is quoted (JSON arrays for RUN and
    COPY, quoted ENV values) or checked, so no step can add an instruction of its own."""
    lines = [f"FROM {base}"]
    steps = ["base"]
    copies: list[tuple[int, str, int | None]] = []
    envs = dict(inherited_env)
    build_args: dict[str, str] = {}
    default_user = DEFAULT_USER
    emitted_user: str | None = None
    workdir: str | None = None

    def emit(line: str, step: str) -> None:
        lines.append(line)
        steps.append(step)

    def as_user(user: str, step: str) -> None:
        nonlocal emitted_user
        if user != emitted_user:
            emit(f"USER {user}", step)
            emitted_user = user

    forced = recipe.force
    for index, item in enumerate(recipe.steps):
        step = str(index + 1)
        args = item.args
        if any(len(arg) > MAX_ARG for arg in args):
            raise TemplateError(f"step {step}: an argument is over {MAX_ARG} bytes")
        if item.force and not forced:
            # E2B's skip_cache: this step and every later one run again. A build argument
            # changes the cache key of every RUN after its declaration.
            forced = True
            emit("ARG INSIEN_SKIP_CACHE", step)
            build_args["INSIEN_SKIP_CACHE"] = secrets.token_hex(8)
        kind = item.type.upper()
        if kind == "RUN":
            if not args:
                raise TemplateError(f"step {step}: RUN needs a command")
            as_user(_user(args[1]) if len(args) > 1 and args[1] else default_user, step)
            emit("RUN " + json.dumps(["/bin/sh", "-c", args[0]]), step)
        elif kind == "COPY":
            if len(args) < 2 or item.files_hash is None:
                raise TemplateError(f"step {step}: COPY needs a source, a destination and files")
            source, dest = args[0], args[1]
            parts = Path(source).parts
            if source.startswith("/") or ".." in parts or not parts:
                raise TemplateError(f"step {step}: COPY's source must be inside the context")
            owner = _user(args[2]) if len(args) > 2 and args[2] else default_user
            mode = None
            if len(args) > 3 and args[3]:
                try:
                    mode = int(args[3], 8)
                except ValueError:
                    raise TemplateError(f"step {step}: mode {args[3]!r} is not octal") from None
            _single_line(dest, f"step {step}: COPY's destination")
            if not FILES_HASH.fullmatch(item.files_hash):
                raise TemplateError(f"step {step}: filesHash is not a SHA-256 in hex")
            copies.append((index, item.files_hash, mode))
            sources = f"files/{index}/{Path(*parts).as_posix()}"
            if _globs_last_part_only(parts):
                # The upload holds the glob's matches alone (the SDK's tar), under their
                # folder: copying that folder puts the matches in `dest` as Docker's glob
                # would, but copies a matched symlink as it is, where the classic builder
                # follows one and fails on an absolute or a dangling target.
                sources = f"files/{index}/" + "".join(f"{part}/" for part in parts[:-1])
            emit(f"COPY --chown={owner} " + json.dumps([sources, dest]), step)
        elif kind == "ENV":
            if not args or len(args) % 2:
                raise TemplateError(f"step {step}: ENV takes names and values in pairs")
            pairs = list(zip(args[::2], args[1::2], strict=True))
            for name, value in pairs:
                if not ENV_NAME.fullmatch(name) or name.startswith("INSIEN_"):
                    raise TemplateError(f"step {step}: {name!r} is not an environment name")
                _single_line(value, f"step {step}: the value of {name}")
                envs[name] = value
            emit(_env_line(pairs), step)
        elif kind == "WORKDIR":
            if len(args) != 1 or not args[0].startswith("/"):
                raise TemplateError(f"step {step}: WORKDIR takes one absolute path")
            workdir = _single_line(args[0], f"step {step}: WORKDIR")
            emit(f"WORKDIR {workdir}", step)
        elif kind == "USER":
            if len(args) != 1:
                raise TemplateError(f"step {step}: USER takes one user")
            default_user = _user(args[0])
        else:
            raise TemplateError(f"step {step}: {item.type!r} steps are not supported by Insien")
    return Dockerfile("\n".join(lines) + "\n", base, steps, copies, envs, build_args, workdir)


def _member_name(name: str) -> str | None:
    """A tar member's path relative to the upload, or None for one that leaves it."""
    parts = [p for p in Path(name).parts if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        return None
    return Path(*parts).as_posix()


GLOB = re.compile(r"[*?\[]")


def _globs_last_part_only(parts: tuple[str, ...]) -> bool:
    """Whether a COPY source is a glob in its last part alone (`folder/*.txt`)."""
    return bool(GLOB.search(parts[-1])) and not any(GLOB.search(part) for part in parts[:-1])


def write_context(out: IO[bytes], text: str, uploads: list[tuple[int, Path, int | None]]) -> None:
    """The build context: the Dockerfile, and each COPY step's uploaded archive under
    `files/<index>/`. Members are re-written, never unpacked here: only files, folders and
    links inside the upload, owned by root, without set-id bits (COPY sets the owner)."""
    total = 0
    with tarfile.open(fileobj=out, mode="w") as context:
        data = text.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        info.mode = 0o644
        context.addfile(info, io.BytesIO(data))
        for index, path, mode in uploads:
            prefix = f"files/{index}/"
            folder = tarfile.TarInfo(prefix.rstrip("/"))
            folder.type = tarfile.DIRTYPE
            folder.mode = 0o755
            context.addfile(folder)
            with tarfile.open(path, "r:*") as upload:
                for member in upload:
                    name = _member_name(member.name)
                    if name is None or not (
                        member.isreg() or member.isdir() or member.issym() or member.islnk()
                    ):
                        continue
                    total += member.size if member.isreg() else 0
                    if total > MAX_CONTEXT_BYTES:
                        raise TemplateError(f"the uploads hold over {MAX_CONTEXT_BYTES} bytes")
                    copied = tarfile.TarInfo(prefix + name)
                    copied.type = member.type
                    copied.size = member.size if member.isreg() else 0
                    copied.mtime = member.mtime
                    copied.mode = member.mode & 0o1777
                    if mode is not None and member.isreg():
                        copied.mode = mode & 0o1777
                    if member.issym():
                        copied.linkname = member.linkname
                    elif member.islnk():
                        target = _member_name(member.linkname)
                        if target is None:
                            continue
                        copied.linkname = prefix + target
                    source = upload.extractfile(member) if member.isreg() else None
                    context.addfile(copied, source)


class TemplateBuilds:
    """Builds, uploads, names and tags of tenants' templates (the E2B front's builder)."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        snapshots: Snapshots,
        resolve_operator: Callable[[str], str | None],
    ) -> None:
        self._runtime = runtime
        self._store = runtime if isinstance(runtime, ImageBuilder) else None
        self._settings = settings
        self._snapshots = snapshots
        self._resolve_operator = resolve_operator
        """An operator's template by an E2B name ("base", an INSIEN_E2B_TEMPLATES alias), or
        None."""
        self._files = settings.state_dir / "template-files"
        self._builds: dict[str, Build] = {}
        self._uploads: dict[str, Upload] = {}
        self._limit = trio.Semaphore(CONCURRENT_BUILDS)
        self._lock = trio.Lock()

    # -- names ----------------------------------------------------------------------------------

    def template_id(self, tenant: Tenant, alias: str) -> str:
        digest = hashlib.sha256(f"{self._settings.instance}\0{tenant.id}\0{alias}".encode())
        return digest.hexdigest()[:20]

    def _builder(self) -> ImageBuilder:
        if self._store is None:
            raise not_supported(self._runtime, "building a template")
        return self._store

    async def _images(self, tenant: Tenant) -> list[ImageInfo]:
        """The tenant's template images here (each build that some name still holds)."""
        if self._store is None:
            return []
        found = await self._store.images_labelled(f"{SNAPSHOT_OWNER_LABEL}={tenant.id}")
        return [
            image
            for image in found
            if image.labels.get(SNAPSHOT_INSTANCE_LABEL) == self._settings.instance
            and image.labels.get(TEMPLATE_ID_LABEL)
        ]

    @staticmethod
    def _snapshot_tag(image: ImageInfo) -> str | None:
        return next((t for t in image.tags if t.startswith(f"{SNAPSHOT_REPOSITORY}:")), None)

    async def image_names(self, tenant: Tenant) -> set[str]:
        """The tenant's built templates as snapshot names (snapshot lists leave them out)."""
        return {tag for image in await self._images(tenant) for tag in image.tags}

    async def find(self, tenant: Tenant, wanted: str) -> tuple[str, ImageInfo] | None:
        """(template id, image) of the tenant's template named `wanted`: `alias`, `alias:tag`
        or its template id (the tag `default` unless given)."""
        try:
            alias, tag = split_name(wanted)
        except TemplateError:
            return None
        images = await self._images(tenant)
        for template_id in (self.template_id(tenant, alias), alias):
            name = f"{TEMPLATE_REPOSITORY}{template_id}:{tag or DEFAULT_TAG}"
            for image in images:
                if name in image.tags and image.labels.get(TEMPLATE_ID_LABEL) == template_id:
                    return template_id, image
        return None

    async def image_for(self, tenant: Tenant, wanted: str) -> str | None:
        """What a create naming `wanted` starts from: one of the tenant's templates, as the
        snapshot image its sandboxes are made from."""
        found = await self.find(tenant, wanted)
        return self._snapshot_tag(found[1]) if found else None

    async def env_for(self, tenant: Tenant, image: str) -> dict[str, str]:
        """The environment a template's ENV steps set, for a sandbox of it (none for any other
        image, or another tenant's)."""
        if self._store is None or not image.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            return {}
        labels = await self._store.image_labels(image) or {}
        if labels.get(SNAPSHOT_OWNER_LABEL) != tenant.id or not labels.get(TEMPLATE_ID_LABEL):
            return {}
        try:
            env = json.loads(labels.get(TEMPLATE_ENV_LABEL) or "{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}

    async def program_of(self, tenant: Tenant, image: str) -> StartProgram | None:
        """The start and ready commands of the tenant's template `image`, if it has any."""
        if self._store is None or not image.startswith(f"{SNAPSHOT_REPOSITORY}:"):
            return None
        labels = await self._store.image_labels(image) or {}
        if labels.get(SNAPSHOT_OWNER_LABEL) != tenant.id or not labels.get(TEMPLATE_ID_LABEL):
            return None
        try:
            found = json.loads(labels.get(TEMPLATE_START_LABEL) or "null")
        except ValueError:
            return None
        if not isinstance(found, dict):
            return None
        start, ready = found.get("start"), found.get("ready")
        return StartProgram(
            start if isinstance(start, str) else None,
            ready if isinstance(ready, str) else None,
            str(found.get("cwd") or "/home/user"),
        )

    async def exists(self, tenant: Tenant, alias: str) -> str | None:
        """The template id of the tenant's template `alias` (any tag), or None."""
        try:
            name, _ = split_name(alias)
        except TemplateError:
            return None
        template_id = self.template_id(tenant, name)
        for image in await self._images(tenant):
            if image.labels.get(TEMPLATE_ID_LABEL) == template_id:
                return template_id
        return None

    def operator_template(self, alias: str) -> str | None:
        """The image of an operator's template by the name E2B's SDKs give it (`base`,
        `code-interpreter-v1`, an `INSIEN_E2B_TEMPLATES` alias), or None: every tenant may
        use these, as E2B's public templates."""
        try:
            name, _ = split_name(alias)
        except TemplateError:
            return None
        return self._resolve_operator(name)

    def _template_of(self, tenant: Tenant, wanted: str) -> str:
        """A template id from a name or id (which need not exist yet)."""
        alias, _ = split_name(wanted)
        if re.fullmatch(r"[0-9a-f]{20}", alias):
            return alias
        return self.template_id(tenant, alias)

    # -- requests and uploads ---------------------------------------------------------------------

    async def request(self, tenant: Tenant, name: str, tags: list[str]) -> Build:
        """A new build of `name` (`alias` or `alias:tag`), waiting for its steps."""
        self._builder()
        alias, tag = split_name(name)
        wanted = [tag] if tag else []
        for extra in tags:
            if not TAG.fullmatch(extra):
                raise TemplateError(f"tag {extra!r} is not letters, digits, . _ -")
            wanted.append(extra)
        chosen = tuple(dict.fromkeys(wanted or [DEFAULT_TAG]))
        plan = tenant.plan
        template_id = self.template_id(tenant, alias)
        if plan.max_snapshots is not None:
            # a rebuild's predecessor goes once its names move on, so it does not count
            replaced = {
                tag
                for image in await self._images(tenant)
                if image.labels.get(TEMPLATE_ID_LABEL) == template_id
                for tag in image.tags
            }
            kept = [s for s in await self._snapshots.entries(tenant) if s.template not in replaced]
            if len(kept) >= plan.max_snapshots:
                raise QuotaExceeded(
                    ErrorCode.QUOTA_EXCEEDED,
                    f"at most {plan.max_snapshots} snapshots and templates; delete one",
                    60.0,
                    "snapshots",
                )
        self._forget_old(tenant)
        build = Build(
            build_id=str(uuid.uuid4()),
            template_id=template_id,
            owner=tenant.id,
            alias=alias,
            tags=chosen,
        )
        self._builds[build.build_id] = build
        return build

    def _forget_old(self, tenant: Tenant) -> None:
        mine = sorted(
            (b for b in self._builds.values() if b.owner == tenant.id), key=lambda b: b.created
        )
        for old in mine[: max(0, len(mine) - MAX_BUILDS_KEPT + 1)]:
            if old.status in ("ready", "error"):
                del self._builds[old.build_id]
        now = time.monotonic()
        for token, upload in list(self._uploads.items()):
            if upload.expires < now:
                del self._uploads[token]

    def _tenant_files(self, tenant_id: str) -> Path:
        return self._files / hashlib.sha256(tenant_id.encode()).hexdigest()[:32]

    def upload_link(self, tenant: Tenant, template: str, files_hash: str) -> tuple[bool, str]:
        """Whether the files are here already, and a token that lets one PUT of them in (the
        SDK sends them without its key). Files are kept per tenant: a hash another tenant
        uploaded means nothing here."""
        self._builder()
        if not FILES_HASH.fullmatch(files_hash):
            raise TemplateError("the files hash is not a SHA-256 in hex")
        template_id = self._template_of(tenant, template)
        if not any(
            b.template_id == template_id and b.owner == tenant.id for b in self._builds.values()
        ):
            raise TemplateNotFound(template)
        present = (self._tenant_files(tenant.id) / files_hash).is_file()
        token = secrets.token_urlsafe(32)
        self._uploads[token] = Upload(
            tenant.id, template_id, files_hash, time.monotonic() + UPLOAD_LINK_SECONDS
        )
        return present, token

    async def receive_upload(self, token: str, chunks: AsyncIterator[bytes]) -> None:
        """Keep the files a link was made for (once; an unknown or used link is not found)."""
        upload = self._uploads.pop(token, None)
        if upload is None or upload.expires < time.monotonic():
            raise TemplateError("no such upload link (it was used, or has expired)", 404)
        temporary = trio.Path(await trio.to_thread.run_sync(self._upload_file, upload.owner))
        try:
            size = 0
            async with await trio.open_file(temporary, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise TemplateError(f"an upload is at most {MAX_UPLOAD_BYTES} bytes", 413)
                    await out.write(chunk)
            await temporary.replace(temporary.parent / upload.files_hash)
        finally:
            await temporary.unlink(missing_ok=True)

    def _upload_file(self, owner: str) -> str:
        """A new temporary file among the tenant's uploads, which are bounded: past the bound
        they all go (they are only the build cache: uploading again refills it)."""
        folder = self._tenant_files(owner)
        folder.mkdir(parents=True, exist_ok=True)
        if sum(p.stat().st_size for p in folder.iterdir()) > MAX_TENANT_UPLOAD_BYTES:
            for old in folder.iterdir():
                old.unlink(missing_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
        os.close(fd)
        return temporary

    # -- building -------------------------------------------------------------------------------

    def build_of(self, tenant: Tenant, template: str, build_id: str) -> Build:
        build = self._builds.get(build_id)
        if build is None or build.owner != tenant.id:
            raise TemplateError(f"build {build_id!r} not found", 404)
        if template not in (build.template_id, build.alias):
            raise TemplateError(f"build {build_id!r} not found", 404)
        return build

    async def _base(self, tenant: Tenant, recipe: Recipe) -> tuple[str, str, dict[str, str]]:
        """(image to build on, the operator's template it descends from, inherited env)."""
        store = self._builder()
        if recipe.registry:
            raise TemplateError(
                "images from registries (with credentials) cannot be used: no registry is "
                "reachable from this server; build from one of its templates instead"
            )
        if recipe.from_template is not None:
            wanted = recipe.from_template
            found = self._resolve_operator(wanted)
            if found is None:
                found = await self.image_for(tenant, wanted)
            if found is None:
                found = await self._snapshots.named(tenant, wanted)
            if found is None:
                raise TemplateError(f"template {wanted!r} not found", 404)
            image = found
        else:
            wanted = recipe.from_image or "e2bdev/base"
            image = self._settings.agent_image if E2B_BASES.fullmatch(wanted) else wanted
        if image in self._settings.allowed_templates:
            if not await store.image_exists(image):
                raise TemplateError(
                    f"image {image!r} (for {wanted!r}) is not on this server's Docker Engine:"
                    " the operator builds it (`insien image build`)"
                )
            return image, image, {}
        labels = await store.image_labels(image) if image.startswith(SNAPSHOT_REPOSITORY) else None
        if (
            labels is not None
            and labels.get(SNAPSHOT_OWNER_LABEL) == tenant.id
            and labels.get(SNAPSHOT_INSTANCE_LABEL) == self._settings.instance
        ):
            base = labels.get(SNAPSHOT_BASE_LABEL) or self._settings.agent_image
            return image, base, await self.env_for(tenant, image)
        ours = image.startswith((SNAPSHOT_REPOSITORY, TEMPLATE_REPOSITORY))
        if ours or not await store.image_exists(image):  # another tenant's looks like none
            raise TemplateError(
                f"image {wanted!r} is not on this server's Docker Engine, and no registry is "
                "reachable from it to pull one: build from one of the server's templates "
                f"({', '.join(self._settings.allowed_templates)}) or your own"
            )
        raise TemplateError(
            f"image {wanted!r} is not one of this server's templates: build from one of "
            f"{', '.join(self._settings.allowed_templates)} or your own templates"
        )

    async def start(
        self,
        tenant: Tenant,
        template: str,
        build_id: str,
        recipe: Recipe,
        nursery_start: Callable[..., Awaitable[Any]],
    ) -> None:
        """Check the recipe and start building it in the background (`nursery_start` is the
        server's `Background.start`); the build's status and logs tell how it goes."""
        build = self.build_of(tenant, template, build_id)
        if build.status != "waiting" or build.entries:
            raise TemplateError(f"build {build_id} was started already", 409)
        if len(recipe.steps) > MAX_STEPS:
            raise TemplateError(f"a template has at most {MAX_STEPS} steps")
        image, base, env = await self._base(tenant, recipe)
        plan = dockerfile(image, recipe, env)
        folder = self._tenant_files(tenant.id)
        uploads: list[tuple[int, Path, int | None]] = []
        for index, files_hash, mode in plan.copies:
            path = folder / files_hash
            if not path.is_file():
                raise TemplateError(f"step {index + 1}: its files were not uploaded")
            uploads.append((index, path, mode))
        build.add(f"Building {build.alias} on {image}")
        program = StartProgram(recipe.start_cmd, recipe.ready_cmd, plan.workdir or "/home/user")
        await nursery_start(self._run, tenant, build, plan, uploads, base, recipe.force, program)

    async def _run(
        self,
        tenant: Tenant,
        build: Build,
        plan: Dockerfile,
        uploads: list[tuple[int, Path, int | None]],
        base: str,
        no_cache: bool,
        program: StartProgram,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        try:
            async with self._limit:
                build.status = "building"
                await self._build(tenant, build, plan, uploads, base, no_cache, program)
        except BuildStepFailed as exc:
            step = plan.steps[exc.step - 1] if exc.step and exc.step <= len(plan.steps) else None
            self._fail(build, str(exc), step)
        except (RuntimeFailure, QuotaExceeded, TemplateError, OSError, tarfile.TarError) as exc:
            self._fail(build, str(exc), "finalize")
        else:
            build.status = "ready"
            build.add("Build finished")
            log.info("template %s built (%s) for %s", build.alias, build.build_id, tenant.id)

    @staticmethod
    def _fail(build: Build, message: str, step: str | None) -> None:
        build.reason = message
        build.failed_step = step
        build.add(message, "error", step)
        build.status = "error"

    async def _build(
        self,
        tenant: Tenant,
        build: Build,
        plan: Dockerfile,
        uploads: list[tuple[int, Path, int | None]],
        base: str,
        no_cache: bool,
        program: StartProgram,
    ) -> None:
        store = self._builder()
        snapshot = f"{SNAPSHOT_REPOSITORY}:{secrets.token_hex(8)}"
        labels = {
            SNAPSHOT_OWNER_LABEL: tenant.id,
            SNAPSHOT_INSTANCE_LABEL: self._settings.instance,
            SNAPSHOT_SOURCE_LABEL: "",
            SNAPSHOT_NAME_LABEL: "",
            SNAPSHOT_BASE_LABEL: base,
            TEMPLATE_ID_LABEL: build.template_id,
            TEMPLATE_ALIAS_LABEL: build.alias,
            TEMPLATE_BUILD_LABEL: build.build_id,
            TEMPLATE_ENV_LABEL: json.dumps(plan.envs, sort_keys=True),
            TEMPLATE_START_LABEL: json.dumps(
                {"start": program.start, "ready": program.ready, "cwd": program.cwd}
            )
            if program.start or program.ready
            else "",
        }
        with tempfile.TemporaryFile() as context:
            await trio.to_thread.run_sync(write_context, context, plan.text, uploads)
            context.seek(0)

            def output(line: str) -> None:
                build.add(line)

            job = ImageBuild(
                tag=snapshot,
                context=context,
                labels={**labels, SNAPSHOT_BYTES_LABEL: "0"},
                build_args=plan.build_args,
                memory=BUILD_MEMORY,
                network=self._settings.build_network,
                no_cache=no_cache,
                timeout=BUILD_SECONDS,
            )
            await store.build_image(job, output)
        size = await self._added_bytes(store, snapshot, plan.base)
        # The snapshot quota counts bytes from a label, which is only known now: a build of
        # nothing but labels on the image just made records them (no layer is added).
        with tempfile.TemporaryFile() as context:
            await trio.to_thread.run_sync(write_context, context, f"FROM {snapshot}\n", [])
            context.seek(0)
            await store.build_image(
                ImageBuild(
                    tag=snapshot,
                    context=context,
                    labels={**labels, SNAPSHOT_BYTES_LABEL: str(size)},
                    network=False,
                ),
                lambda _line: None,
            )
        await self._within_bytes(tenant, store, snapshot, size)
        async with self._lock:
            for tag in build.tags:
                await store.tag_image(snapshot, f"{TEMPLATE_REPOSITORY}{build.template_id}", tag)
            await self._collect(tenant)

    async def _added_bytes(self, store: ImageBuilder, image: str, base: str) -> int:
        """What the build added to its base, as the quota counts it."""
        return max(0, await store.image_size(image) - await store.image_size(base))

    async def _within_bytes(
        self, tenant: Tenant, store: ImageBuilder, snapshot: str, size: int
    ) -> None:
        limit = tenant.plan.max_snapshot_bytes
        if limit is None:
            return
        used = sum(s.bytes for s in await self._snapshots.entries(tenant) if s.template != snapshot)
        if used + size > limit:
            await store.remove_image(snapshot)
            raise QuotaExceeded(
                ErrorCode.QUOTA_EXCEEDED,
                f"snapshots and templates may hold {limit} bytes; {used} are used and this "
                f"build adds {size}",
                60.0,
                "snapshot_bytes",
            )

    async def _collect(self, tenant: Tenant) -> None:
        """Builds no name holds any more go (a tag moved on to a newer build)."""
        store = self._builder()
        for image in await self._images(tenant):
            running = self._builds.get(image.labels.get(TEMPLATE_BUILD_LABEL, ""))
            if running is not None and running.status == "building":
                continue  # not named yet: its build is still on the way
            if not any(t.startswith(TEMPLATE_REPOSITORY) for t in image.tags):
                for tag in image.tags:
                    await store.remove_image(tag)

    # -- tags and deletion ------------------------------------------------------------------------

    async def tags(self, tenant: Tenant, template: str) -> list[TemplateTag]:
        template_id = self._template_of(tenant, template)
        found = []
        for image in await self._images(tenant):
            if image.labels.get(TEMPLATE_ID_LABEL) != template_id:
                continue
            for name in image.tags:
                if name.startswith(f"{TEMPLATE_REPOSITORY}{template_id}:"):
                    found.append(
                        TemplateTag(
                            name.split(":", 1)[1],
                            image.labels.get(TEMPLATE_BUILD_LABEL, ""),
                            datetime.fromtimestamp(image.created, UTC),
                        )
                    )
        if not found:
            raise TemplateNotFound(template)
        return sorted(found, key=lambda t: t.tag)

    async def assign_tags(self, tenant: Tenant, target: str, tags: list[str]) -> str:
        """Point `tags` of the template at the build `target` (`alias:tag`) names; returns that
        build's id."""
        store = self._builder()
        for tag in tags:
            if not TAG.fullmatch(tag):
                raise TemplateError(f"tag {tag!r} is not letters, digits, . _ -")
        async with self._lock:
            found = await self.find(tenant, target)
            if found is None:
                raise TemplateNotFound(target)
            template_id, image = found
            snapshot = self._snapshot_tag(image)
            if snapshot is None:
                raise TemplateNotFound(target)
            for tag in tags:
                await store.tag_image(snapshot, f"{TEMPLATE_REPOSITORY}{template_id}", tag)
            await self._collect(tenant)
        return image.labels.get(TEMPLATE_BUILD_LABEL, "")

    async def remove_tags(self, tenant: Tenant, name: str, tags: list[str]) -> None:
        store = self._builder()
        async with self._lock:
            template_id = self._template_of(tenant, name)
            held = {
                t
                for image in await self._images(tenant)
                if image.labels.get(TEMPLATE_ID_LABEL) == template_id
                for t in image.tags
            }
            for tag in tags:
                if f"{TEMPLATE_REPOSITORY}{template_id}:{tag}" not in held:
                    raise TemplateNotFound(f"{name}:{tag}")
            for tag in tags:
                await store.remove_image(f"{TEMPLATE_REPOSITORY}{template_id}:{tag}")
            await self._collect(tenant)

    async def delete(self, tenant: Tenant, template: str) -> bool:
        """Remove every build of the tenant's template (by name or id); False if it has none
        (someone else's looks like none)."""
        if self._store is None:
            return False
        try:
            template_id = self._template_of(tenant, template)
        except TemplateError:
            return False
        async with self._lock:
            images = [
                i
                for i in await self._images(tenant)
                if i.labels.get(TEMPLATE_ID_LABEL) == template_id
            ]
            for image in images:
                for tag in image.tags:
                    await self._store.remove_image(tag)
        if images:
            log.info("template %s deleted by %s", template, tenant.id)
        return bool(images)
