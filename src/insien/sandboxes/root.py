"""Where user code may become root: only where root inside is unprivileged outside.

Under gVisor (`runsc`) root is root of the sandbox's own kernel, and with the Docker Engine
remapping user namespaces (`userns-remap`) it is an unprivileged uid on the host. In such
sandboxes the agent starts a command as root when it asks (`"user": "root"`, E2B's
`user="root"`), and they start without `no-new-privileges`, so the image's `sudo` works where
the runtime honours set-uid (runc with remapped users; runsc sets no_new_privs itself).
Everywhere else the answer is a refusal that names the reason and the way to root
(docs/gvisor.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sandbox import Sandbox

ROOT_RUNTIMES = frozenset({"runsc"})
"""OCI runtimes whose root is unprivileged on the host."""

ROOT_REFUSED = (
    "root is not available in this sandbox: under runc its root would be the host's root "
    "(the Docker Engine does not remap user namespaces), so commands and files run as 'user' "
    "(uid 1000). Root and sudo work in sandboxes of a template that runs under gVisor "
    "(runtime 'runsc' in INSIEN_TEMPLATE_SETTINGS, or INSIEN_RUNTIME=runsc)"
)


def root_allowed(oci_runtime: str | None, users_remapped: bool) -> bool:
    """Whether a sandbox on `oci_runtime` (None: the engine's default, runc) may run root."""
    return oci_runtime in ROOT_RUNTIMES or users_remapped


def users_remapped(runtime: object) -> bool:
    """Whether `runtime` says its engine remaps user namespaces (the Docker runtime reads it
    from `docker info`); a runtime that does not say is taken not to."""
    return getattr(runtime, "users_remapped", False) is True


def sandbox_root_allowed(sandbox: Sandbox, runtime: object) -> bool:
    """Whether this sandbox's user code may be root (as its container was created)."""
    return root_allowed(sandbox.options.runtime, users_remapped(runtime))
