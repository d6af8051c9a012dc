"""What every front checks before it asks the core for a sandbox: the template is an image name
the operator allows, lifetimes and limits are within the tenant's plan and the operator's
maximum, and no environment name is the server's. The REST routes kept from the original Node.js
design and the E2B front share it, so one create means the same thing whichever protocol asked."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from ..egress import NetworkPolicy, RuleError
from ..protocol import ErrorCode
from ..sandboxes.sandbox import SandboxOptions
from ..sandboxes.volumes import BadVolume, MountRequest, VolumeNotFound
from ..tenancy.resources import Resources, parse_size
from ..tenancy.tenants import Tenant
from .context import Services
from .errors import ApiError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*(?::[0-9]{{1,5}})?/)?"  # registry host[:port]/
    rf"{_COMPONENT}(?:/{_COMPONENT})*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # :tag
    r"(?:@sha256:[0-9a-f]{64})?"  # @digest
)
"""Docker's image reference grammar, strictly: nothing else may reach an API path."""


class ResourcesRequest(BaseModel):
    """Limits a create may ask for, each within the tenant's plan and the operator's maximum."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cpu: Annotated[StrictFloat, Field(gt=0, le=1024)] | None = None
    memory: Annotated[StrictInt, Field(ge=32 * 1024 * 1024)] | StrictStr | None = None
    pids: Annotated[StrictInt, Field(ge=16, le=1 << 22)] | None = None


class VolumeMountRequest(BaseModel):
    """One of a create's `volumes`: a volume of the caller's, where, and whether read-only."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: StrictStr
    path: StrictStr = Field(description="Absolute; not /, /opt, /tmp or a system folder.")
    readOnly: StrictBool = False


def _bad(message: str) -> ApiError:
    return ApiError(400, ErrorCode.BAD_REQUEST, message)


def resolve_resources(
    services: Services, asked: ResourcesRequest | None, tenant: Tenant
) -> Resources:
    settings = services.settings
    ceiling = tenant.plan.max_resources or settings.max_resources
    default = settings.default_resources.capped(ceiling)
    if asked is None:
        return default
    memory = default.memory
    if asked.memory is not None:
        try:
            memory = parse_size(asked.memory)
        except ValueError as exc:
            raise _bad(f"resources.memory: {exc}") from None
        if memory < 32 * 1024 * 1024:
            raise _bad("resources.memory is at least 32m")
    chosen = Resources(
        float(asked.cpu) if asked.cpu is not None else default.cpus,
        memory,
        asked.pids if asked.pids is not None else default.pids,
    )
    problems = chosen.within(ceiling)
    if problems:
        raise _bad("; ".join(problems))
    return chosen


async def sandbox_options(
    services: Services,
    tenant: Tenant,
    *,
    template: str | None,
    lifetime: float | None,
    idle_timeout: float | None,
    metadata: dict[str, str],
    env: dict[str, str],
    resources: ResourcesRequest | None = None,
    no_idle_timeout: bool = False,
    network: NetworkPolicy | None = None,
    volumes: Sequence[VolumeMountRequest] = (),
) -> SandboxOptions:
    """Options for `manager.create`, or the 400 that says which choice is not allowed.

    `no_idle_timeout` is for fronts whose protocol knows only a lifetime (E2B): such a sandbox
    lives until its timeout whether or not anyone uses it."""
    settings = services.settings
    template = template or settings.agent_image
    if not IMAGE_REFERENCE.fullmatch(template):
        # Checked before any Docker call: an image name is part of Docker API paths.
        raise _bad(f"template {template!r} is not an image name")
    isolation = await services.manager.snapshots.resolve(template, tenant)
    if isolation is None:
        raise _bad(f"template {template!r} is not allowed")
    if lifetime is not None and lifetime > settings.max_timeout:
        raise _bad(f"timeout is at most {settings.max_timeout:g} seconds")
    if idle_timeout is not None and idle_timeout > settings.max_timeout:
        raise _bad(f"idleTimeout is at most {settings.max_timeout:g}")
    reserved = [name for name in env if name.startswith("INSIEN_")]
    if reserved:
        raise _bad(f"env names {reserved} are reserved")
    if any("\x00" in text for pair in env.items() for text in pair):
        # Every command of the sandbox gets these: the agent could start none of them.
        raise _bad("env names and values must not contain a NUL byte")
    wanted = [MountRequest(v.name, v.path, v.readOnly) for v in volumes]
    try:
        mounts = await services.manager.volumes.mounts(tenant, wanted) if wanted else ()
    except BadVolume as exc:
        raise _bad(f"volumes: {exc}") from None
    except VolumeNotFound as exc:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no volume {exc.args[0]!r}") from None
    if no_idle_timeout:
        idle: float | None = None
    else:
        idle = float(idle_timeout or 0) or settings.default_idle_timeout
    return SandboxOptions(
        template=template,
        resources=resolve_resources(services, resources, tenant),
        runtime=isolation.runtime,
        network=isolation.network,
        python=isolation.python,
        timeout=float(lifetime or settings.default_timeout),
        idle_timeout=idle,
        metadata=dict(metadata),
        env=dict(env),
        network_policy=network or NetworkPolicy(),
        volumes=mounts,
    )


def network_policy(
    allow_out: list[str], deny_out: list[str], allow_public_traffic: bool
) -> NetworkPolicy:
    """A sandbox's network policy from a request, or the 400 naming the rule that is wrong."""
    try:
        return NetworkPolicy.of(allow_out, deny_out, allow_public_traffic)
    except RuleError as exc:
        raise _bad(f"network: {exc}") from None


# A strict float takes JSON integers too (never strings or booleans).
Seconds = Annotated[StrictFloat, Field(gt=0)]
Label = Annotated[StrictStr, Field(min_length=1, max_length=256)]
