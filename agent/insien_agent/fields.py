"""Typed access to request fields: every mistyped or missing field becomes BAD_REQUEST."""

from __future__ import annotations

from typing import Any

from .errors import BAD_REQUEST, AgentError

Message = dict[str, Any]


def required_str(msg: Message, name: str, *, allow_empty: bool = False) -> str:
    value = msg.get(name)
    if not isinstance(value, str) or (not allow_empty and not value):
        raise AgentError(BAD_REQUEST, f"field {name!r} must be a non-empty string")
    return value


def optional_str(msg: Message, name: str, default: str) -> str:
    value = msg.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise AgentError(BAD_REQUEST, f"field {name!r} must be a string")
    return value


def str_list(msg: Message, name: str) -> list[str]:
    value = msg.get(name, [])
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AgentError(BAD_REQUEST, f"field {name!r} must be a list of strings")
    return value


def str_map(msg: Message, name: str) -> dict[str, str]:
    value = msg.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise AgentError(BAD_REQUEST, f"field {name!r} must be an object of strings")
    return value


def encoding(msg: Message) -> str:
    value = optional_str(msg, "encoding", "utf-8")
    if value not in ("utf-8", "base64"):
        raise AgentError(BAD_REQUEST, "field 'encoding' must be 'utf-8' or 'base64'")
    return value


def optional_bool(msg: Message, name: str, default: bool) -> bool:
    value = msg.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise AgentError(BAD_REQUEST, f"field {name!r} must be true or false")
    return value


def optional_seconds(msg: Message, name: str) -> float | None:
    value = msg.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise AgentError(BAD_REQUEST, f"field {name!r} must be a positive number of seconds")
    return float(value)


def optional_int(msg: Message, name: str, default: int | None, *, minimum: int = 0) -> int | None:
    value = msg.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AgentError(BAD_REQUEST, f"field {name!r} must be an integer >= {minimum}")
    return value


def required_int(msg: Message, name: str, *, minimum: int = 0) -> int:
    value = optional_int(msg, name, None, minimum=minimum)
    if value is None:
        raise AgentError(BAD_REQUEST, f"field {name!r} is required")
    return value


def file_mode(msg: Message) -> int | None:
    """`mode` as an integer (0o644 = 420) or an octal string ("644", "0o755")."""
    value = msg.get("mode")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value.removeprefix("0o"), 8)
        except ValueError:
            raise AgentError(
                BAD_REQUEST, "field 'mode' must be an octal string or integer"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise AgentError(BAD_REQUEST, "field 'mode' must be a permission mode (0 to 0o7777)")
    return value
