"""Entry point: `python3 -m insien_agent`, or the zip application the orchestrator injects."""

from __future__ import annotations

import asyncio
import logging
import sys

from .dispatch import serve
from .settings import AgentSettings


def main() -> None:
    # stderr is the log channel; stdout carries nothing but protocol lines.
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="insien-agent %(levelname)s %(message)s"
    )
    asyncio.run(serve(AgentSettings.from_environ()))


if __name__ == "__main__":
    main()
