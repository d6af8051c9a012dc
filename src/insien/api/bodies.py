"""JSON request bodies of Quart routes, validated by a pydantic model: a body that does not fit
is a 400 that says which field and why (an empty body is `{}`)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from quart import request

from ..protocol import ErrorCode, describe
from .errors import ApiError

M = TypeVar("M", bound=BaseModel)


async def json_body(model: type[M]) -> M:
    raw = await request.get_data()
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        raise ApiError(400, ErrorCode.BAD_REQUEST, describe(exc)) from None
