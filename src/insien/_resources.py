"""Where the agent and the image recipes live: inside the wheel, or at the repository root."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from . import __version__

_PACKAGE = Path(__file__).resolve().parent
_BUNDLED = _PACKAGE / "_bundled"
_REPO_ROOT = _PACKAGE.parent.parent


def _locate(name: str) -> Path:
    for candidate in (_BUNDLED / name, _REPO_ROOT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"cannot find Insien's {name}/ folder next to {_PACKAGE}")


def agent_package_dir() -> Path:
    return _locate("agent") / "insien_agent"


def images_dir() -> Path:
    return _locate("images")


def agent_zipapp() -> bytes:
    """The agent as a zip application, for `python3 agent.pyz` inside a sandbox."""
    source = agent_package_dir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.glob("*.py")):
            archive.write(path, f"insien_agent/{path.name}")
        archive.writestr("insien_agent/_version.py", f"__version__ = {__version__!r}\n")
        archive.writestr("__main__.py", "from insien_agent.__main__ import main\n\nmain()\n")
    return buffer.getvalue()
