"""The host side of the agent protocol: request multiplexing and credit (`agent`), the byte
contract (`replies`), sessions (`sessions`), byte budgets (`budget`), line reassembly
(`lines`) and whole-file transfers (`transfer`)."""

from __future__ import annotations

from .agent import AgentGone as AgentGone
from .agent import AgentLink as AgentLink
from .agent import AgentProtocolError as AgentProtocolError
from .pending import PendingRequest as PendingRequest
from .replies import Reply as Reply

__all__ = ["AgentGone", "AgentLink", "AgentProtocolError", "PendingRequest", "Reply"]
