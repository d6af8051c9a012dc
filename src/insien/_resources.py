"""Where the agent and the image recipes live: inside the wheel, or at the repository root."""

from __future__ import annotations

import importlib.util
import io
import marshal
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


_EPOCH = (1980, 1, 1, 0, 0, 0)


def _compiled(source: str, name: str) -> bytes:
    """Bytecode for this Python, as an unchecked hash-based .pyc (no timestamps to compare).

    zipimport never writes bytecode, so without it every sandbox compiles the whole agent at
    start (about 50 ms of a cold create). An image whose Python has another bytecode version
    ignores these and compiles the sources, as before."""
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    source_hash = importlib.util.source_hash(source.encode())
    data = bytearray(importlib.util.MAGIC_NUMBER)
    data += (0b01).to_bytes(4, "little")  # hash-based, not checked against the source
    data += source_hash
    # Version 2: no back-references. Newer versions mark an object for reuse when something
    # else in *this* process holds it too (its refcount), so the same sources gave other bytes
    # in a busier process, and the agent volume another name.
    data += marshal.dumps(code, 2)
    return bytes(data)


def _entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, _EPOCH)
    entry.compress_type = zipfile.ZIP_DEFLATED
    return entry


def agent_zipapp() -> bytes:
    """The agent as a zip application, for `python3 agent.pyz` inside a sandbox."""
    source = agent_package_dir()
    files = {f"insien_agent/{path.name}": path.read_text() for path in sorted(source.glob("*.py"))}
    files["insien_agent/_version.py"] = f"__version__ = {__version__!r}\n"
    files["__main__.py"] = "from insien_agent.__main__ import main\n\nmain()\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # Fixed timestamps: the same sources make the same bytes (the agent volume is named
        # after their digest, and every server of one build must find the same volume).
        # A ZipInfo carries its own compression (the archive's applies to names only): 230 KB
        # instead of 600, which a Kubernetes pod is sent on every create.
        for name, text in files.items():
            archive.writestr(_entry(name), text)
            if name.startswith("insien_agent/"):
                archive.writestr(_entry(name + "c"), _compiled(text, name))
    return buffer.getvalue()
