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
