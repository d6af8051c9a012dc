"""The E2B front: E2B's own SDKs, unchanged, against Insien (docs/e2b.md).

`control` serves E2B's REST control plane under `/e2b`; requests addressed to a sandbox (by
header or by host, api/router.py) go to `envd`, which serves envd's Connect services and
`/files` through the same agent link as every other front."""

from .control import control_blueprint as control_blueprint
from .envd import EnvdFront as EnvdFront

__all__ = ["EnvdFront", "control_blueprint"]
