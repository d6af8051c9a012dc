"""Logs: plain text for a terminal, or one JSON object per line (INSIEN_LOG_FORMAT=json) for a
log pipeline, each with the request id, sandbox and tenant it happened for where known.

The context travels in context variables: trio copies them into every task a request starts,
so a line logged deep in the link carries the request that caused it. Nothing secret is put in
them, and no message of ours formats a key, a token or file content (tests/e2e/test_operations.py
greps a whole run's log for the keys it used).
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "insien_request_id", default=None
)
sandbox_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "insien_sandbox_id", default=None
)
tenant_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "insien_tenant_id", default=None
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LIBRARIES = ("httpx", "httpcore")
"""Their INFO lines name every URL called (a webhook URL may hold a token): warnings only."""


def long_lived_task(sandbox: str | None = None, tenant: str | None = None) -> None:
    """Call first in a task that outlives the request that started it (trio copies the
    starter's context): its lines then name its sandbox and tenant, not that request."""
    request_id.set(None)
    sandbox_id.set(sandbox)
    tenant_id.set(tenant)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "requestId"?, "sandboxId"?, "tenant"?,
    "exception"?}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in (
            ("requestId", request_id),
            ("sandboxId", sandbox_id),
            ("tenant", tenant_id),
        ):
            value = var.get()
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, form: str) -> None:
    """The root logger's one handler, on stderr, in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
