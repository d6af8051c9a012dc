"""The E2B front: E2B's own SDKs, unchanged, against Insien (docs/e2b.md).

`control` serves E2B's REST control plane under `/e2b`; `routing` sends requests addressed to
a sandbox (by header or by host) to `envd`, which serves envd's Connect services and `/files`
through the same agent link as every other front."""

from .control import control_blueprint as control_blueprint
from .envd import EnvdFront as EnvdFront
from .routing import E2BRouter as E2BRouter

__all__ = ["E2BRouter", "EnvdFront", "control_blueprint"]
