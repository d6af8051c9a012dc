"""The Insien in-container agent: newline-delimited JSON-RPC over stdin/stdout.

Standard library only, so it runs in any image that has python3. The orchestrator injects it
into each sandbox as a zip application and talks to it over the container's attached stdio.
"""

from importlib import import_module


def _version() -> str:
    """Written into the zip application by the server (`insien._resources.agent_zipapp`): the
    agent's version is the server's, from the one place it is kept."""
    try:
        return str(import_module("insien_agent._version").__version__)
    except ImportError:  # run from the source tree (the agent's own tests)
        return "0.0.0+source"


__version__ = _version()
PROTOCOL_VERSION = 1
