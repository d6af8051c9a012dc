"""Egress policy: which connections out of a sandbox the server makes for it (rules, the
operator's ceiling, the decision per address, and per connection in `connection`). Pure logic,
below the core; `sandboxes.egress` runs it around the I/O of `link.outbound`."""

from .policy import Ceiling as Ceiling
from .policy import NetworkPolicy as NetworkPolicy
from .policy import Refusal as Refusal
from .policy import decide as decide
from .rules import Rule as Rule
from .rules import RuleError as RuleError
from .rules import is_public as is_public
from .rules import parse_rule as parse_rule
from .rules import parse_rules as parse_rules

__all__ = [
    "Ceiling",
    "NetworkPolicy",
    "Refusal",
    "Rule",
    "RuleError",
    "decide",
    "is_public",
    "parse_rule",
    "parse_rules",
]
