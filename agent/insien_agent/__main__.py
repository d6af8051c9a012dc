"""Entry point: `python3 -m insien_agent`, or the zip application the orchestrator injects."""

from __future__ import annotations

import asyncio
import logging
import sys

from .dispatch import serve
from .identity import IdentityError
from .settings import AgentSettings
from .spawner import SPAWNER_FLAG, helper_main


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == SPAWNER_FLAG:
        helper_main(int(sys.argv[2]))  # the spawner helper, already running as the user
        return
    # stderr is the log channel; stdout carries nothing but protocol lines.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="insien-agent %(levelname)s %(message)s"
    )
    try:
        asyncio.run(serve(AgentSettings.from_environ()))
    except IdentityError as exc:
        logging.getLogger("insien_agent").error("refusing to start: %s", exc)
        sys.exit(3)


if __name__ == "__main__":
    main()
