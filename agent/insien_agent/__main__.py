"""Entry point: `python3 -m insien_agent`, or the zip application the orchestrator injects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from .dispatch import serve
from .helper import SPAWNER_FLAG, fork_helper, helper_main
from .identity import IdentityError, parse_identity
from .init import become_init_if_pid1
from .kernel import KERNEL_FLAG, kernel_main
from .settings import AgentSettings

AGENT_NAME = "insien-agent"
"""The agent's process name (`comm`), as `ps` and `pgrep -x` show it: started through its
runtime's loader, it would otherwise be named after the loader."""


def _name_agent() -> None:
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(AGENT_NAME)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == KERNEL_FLAG:
        kernel_main()  # a code context, already running as the user (interpreter.py)
        return
    if len(sys.argv) == 3 and sys.argv[1] == SPAWNER_FLAG:
        helper_main(int(sys.argv[2]))  # the spawner helper, already running as the user
        return
    _name_agent()
    become_init_if_pid1()  # in a pod: reap orphans as docker-init does on Docker
    # stderr is the log channel; stdout carries nothing but protocol lines.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="insien-agent %(levelname)s %(message)s"
    )
    try:
        settings = AgentSettings.from_environ()
        # Before asyncio or any thread exists: the only safe moment to fork.
        helper = fork_helper(parse_identity(settings.user, settings.workdir))
        asyncio.run(serve(settings, helper))
    except IdentityError as exc:
        logging.getLogger("insien_agent").error("refusing to start: %s", exc)
        sys.exit(3)


if __name__ == "__main__":
    main()
