"""The Insien in-container agent: newline-delimited JSON-RPC over stdin/stdout.

Standard library only. The orchestrator injects it into each sandbox as a zip application,
with the Python runtime it runs on in Docker (`insien.runtime.agent_runtime`, so any image
will do), and talks to it over the container's attached stdio.
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
