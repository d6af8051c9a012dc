"""Which Python the agent starts: its own interpreter again (a new spawner helper), or the
image's python3 (code contexts, which must see the user's packages).

In Docker the agent runs on the runtime Insien brings (`insien.runtime.agent_runtime`),
started through that runtime's own dynamic loader so that the image's libc never takes part;
`INSIEN_AGENT_LOADER` names the loader, and starting the interpreter again must go through it
too. Nothing of this reaches user commands: their environment leaves out every
`INSIEN_AGENT_*` variable, and the loader's library path applies to the agent's process only.
"""

from __future__ import annotations

import os
import sys

LOADER_ENV = "INSIEN_AGENT_LOADER"
PYTHON_ENV = "INSIEN_AGENT_PYTHON"


def own_interpreter() -> list[str]:
    """The argv prefix that starts the interpreter this agent runs on."""
    loader = os.environ.get(LOADER_ENV)
    if not loader:
        return [sys.executable]
    # The same invocation the container was started with (agent_runtime.interpreter_command).
    return [loader, "--inhibit-cache", "--library-path", os.path.dirname(loader), sys.executable]


def image_python() -> str:
    """The image's python3, which runs code contexts (the agent's own when not told)."""
    return os.environ.get(PYTHON_ENV) or sys.executable
