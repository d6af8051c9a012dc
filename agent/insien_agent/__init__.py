"""The Insien in-container agent: newline-delimited JSON-RPC over stdin/stdout.

Standard library only, so it runs in any image that has python3. The orchestrator injects it
into each sandbox as a zip application and talks to it over the container's attached stdio.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
