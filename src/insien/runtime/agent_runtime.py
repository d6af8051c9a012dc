"""The Python runtime Insien brings into every sandbox, so the agent runs in any image.

Most images have no python3 the agent can run on (Alpine's musl, distroless, busybox, node or
golang images without Python, or one whose python3 is something else). So the agent runs on
an interpreter of its own: the one this server runs on, with the subset of its standard
library the agent imports (one zip of bytecode plus the extension modules), and every shared
library they need *including glibc and its dynamic loader*. The container starts the loader
itself, by absolute path, with our library folder (`ld.so --library-path … python3 …`): the
image's libc, loader cache and `/lib` never take part, and nothing is set in any environment,
so the agent's children (the image's shell, the user's programs) load exactly as they would
without Insien. The bundle is made once per server process, deterministically (fixed
timestamps, sorted entries), and lands next to the agent in the read-only agent volume.

Code contexts keep running on the image's own python3 (the user's packages are there); the
agent is told its path (`INSIEN_AGENT_PYTHON`).

`bundle()` is None where this host cannot provide one (an interpreter that is not an ELF
executable with a loader, a library the loader cannot find): sandboxes then run the agent on
the image's python3, as before.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import logging
import marshal
import modulefinder
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._resources import agent_package_dir
from .base import AGENT_DIR

log = logging.getLogger(__name__)

RUNTIME_DIR = f"{AGENT_DIR}/rt"
LIB_DIR = f"{RUNTIME_DIR}/lib"
"""The loader, glibc and every library the interpreter and its modules load."""
PYTHON = f"{RUNTIME_DIR}/bin/python3"
LOADER_ENV = "INSIEN_AGENT_LOADER"
"""Tells the agent which loader runs it, so it can start its own helper the same way."""
PYTHON_ENV = "INSIEN_AGENT_PYTHON"
"""Tells the agent the image's own python3, which runs code contexts."""
IMAGE_ENV = "INSIEN_AGENT_IMAGE_ENV"
"""The image's loader variables, which the container has blank (`agent_volume.environment`)."""

EXCLUDED = (
    # Imported only by what the agent never calls (or imported in a `try` that copes without
    # it): leaving them out keeps the bundle a few MB instead of tens, and OpenSSL out of it.
    "_bz2",
    "_hashlib",
    "_lzma",
    "_ssl",
    "_testcapi",
    "_testinternalcapi",
    "_tkinter",
    "argparse",
    "bdb",
    "concurrent.futures.process",
    "distutils",
    "doctest",
    "email",
    "ftplib",
    "http",
    "importlib.metadata",
    "importlib.resources",
    "lib2to3",
    "multiprocessing",
    "netrc",
    "pdb",
    "pydoc",
    "pydoc_data",
    "readline",
    "ssl",
    "tarfile",
    "test",
    "tkinter",
    "unittest",
    "urllib.request",
    "webbrowser",
    "xmlrpc",
)
ALWAYS = ("encodings",)
"""Packages shipped whole: codecs are looked up by name at run time, not imported."""

CACHE_PREFIX = "agent-runtime-"
File = tuple[bytes, int]
"""A file's content and mode."""
_EPOCH = (1980, 1, 1, 0, 0, 0)
_PT_INTERP = 3


class RuntimeUnavailable(Exception):
    """This host's interpreter cannot be packed into a bundle (see the module's docstring)."""


@dataclass(frozen=True)
class Bundle:
    """The runtime's files (paths relative to the agent's folder) and how to start it."""

    files: dict[str, File]
    """Relative path -> (content, mode)."""
    loader: str
    """The loader's absolute path inside a sandbox."""

    @functools.cached_property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            content, mode = self.files[name]
            h.update(f"{name}\0{mode:o}\0{len(content)}\0".encode())
            h.update(content)
        return h.hexdigest()

    @property
    def size(self) -> int:
        return sum(len(content) for content, _ in self.files.values())

    def command(self, script: str) -> list[str]:
        """The argv that runs `script` on this runtime, whatever the image's libc."""
        return [*interpreter_command(self.loader), "-I", "-S", script]


def interpreter_command(loader: str) -> list[str]:
    """The loader invocation that starts the bundled python3 (the agent builds the same one
    to start its spawner helper: `insien_agent.selfexec`)."""
    # --inhibit-cache: never read the image's /etc/ld.so.cache (an Alpine image has none,
    # another image's names libraries the bundle's glibc must not load).
    return [loader, "--inhibit-cache", "--library-path", LIB_DIR, PYTHON]


def _elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP of a 64-bit little-endian ELF executable (its dynamic loader)."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return None
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            entry = f.read(phentsize)
            (p_type,) = struct.unpack_from("<I", entry, 0)
            if p_type == _PT_INTERP:
                (offset,) = struct.unpack_from("<Q", entry, 8)
                (size,) = struct.unpack_from("<Q", entry, 32)
                f.seek(offset)
                return f.read(size).rstrip(b"\0").decode()
    return None


def _needed(loader: str, path: Path) -> dict[str, Path]:
    """Soname -> file of every library `path` loads, as the host's loader resolves them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    listed = subprocess.run(
        [loader, "--list", str(path)], capture_output=True, text=True, env=env, check=False
    )
    if listed.returncode != 0:
        raise RuntimeUnavailable(f"{loader} --list {path}: {listed.stderr.strip()}")
    found: dict[str, Path] = {}
    for line in listed.stdout.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if not arrow:
            continue  # the vDSO, or the loader itself
        target = rest.rsplit(" (", 1)[0].strip()
        if target == "not found" or not target.startswith("/"):
            raise RuntimeUnavailable(f"{path} needs {name}, which the host's loader cannot find")
        found[name] = Path(target)
    return found


def _bytecode(source: bytes, name: str) -> bytes:
    """An unchecked hash-based .pyc (as the agent's own zip carries; see `_resources`)."""
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    data = bytearray(importlib.util.MAGIC_NUMBER)
    data += (0b01).to_bytes(4, "little")
    data += importlib.util.source_hash(source)
    data += marshal.dumps(code, 2)
    return bytes(data)


def _modules(stdlib: Path, dynload: Path) -> dict[str, Path]:
    """Every standard-library module the agent can import (its whole closure, bar EXCLUDED),
    by name -> file; built-in modules have no file and need none."""
    finder = modulefinder.ModuleFinder(
        path=[str(agent_package_dir().parent), str(stdlib), str(dynload)],
        excludes=list(EXCLUDED),
    )
    finder.import_hook("insien_agent.__main__")
    for package in ALWAYS:
        finder.import_hook(package)
        for found in sorted((stdlib / package).glob("*.py")):
            if found.stem != "__init__":
                finder.import_hook(f"{package}.{found.stem}")
    modules: dict[str, Path] = {}
    for name, module in finder.modules.items():
        file: str | None = getattr(module, "__file__", None)  # modulefinder.Module
        if file is None or name.startswith("insien_agent") or name == "__main__":
            continue
        path = Path(file)
        if stdlib in path.parents or dynload in path.parents:
            modules[name] = path
    return modules


def _sources() -> tuple[Path, Path, Path]:
    """The interpreter to bring and its standard library's folders: the system's Python of the
    server's version where there is one (Debian's and Ubuntu's are built with PGO and LTO and
    link libpython statically: the agent imports in 80 ms where a plain `--enable-shared`
    build such as pyenv's takes 100), else the server's own (its base installation, not a
    virtual environment's). Bytecode is the same for every release of one version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = Path(f"/usr/bin/python{version}")
    system_stdlib = Path(f"/usr/lib/python{version}")
    if system.is_file() and (system_stdlib / "os.py").is_file():
        return system.resolve(), system_stdlib, system_stdlib / "lib-dynload"
    executable = Path(os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable))
    stdlib = Path(os.__file__).resolve().parent
    dynload = Path(sysconfig.get_config_var("DESTSHARED") or stdlib / "lib-dynload").resolve()
    return executable, stdlib, dynload


def _gather(executable: Path, loader: str, stdlib: Path, dynload: Path) -> dict[str, File]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    pure_dir = f"rt/lib/python{version}"
    files: dict[str, File] = {"rt/bin/python3": (executable.read_bytes(), 0o755)}
    extensions: list[Path] = []
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as stdlib_zip:
        for _name, path in sorted(_modules(stdlib, dynload).items()):
            if path.suffix == ".so":
                files[f"{pure_dir}/lib-dynload/{path.name}"] = (path.read_bytes(), 0o755)
                extensions.append(path)
                continue
            relative = path.relative_to(stdlib)
            # Stored, not deflated: zipimport would inflate every module at every start.
            entry = zipfile.ZipInfo(relative.with_suffix(".pyc").as_posix(), _EPOCH)
            stdlib_zip.writestr(entry, _bytecode(path.read_bytes(), relative.as_posix()))
    files[f"rt/lib/python{version.replace('.', '')}.zip"] = (archive.getvalue(), 0o644)
    # The landmark by which the interpreter finds its prefix (rt/) from its own path.
    files[f"{pure_dir}/os.py"] = ((stdlib / "os.py").read_bytes(), 0o644)

    libraries: dict[str, Path] = {}
    for binary in (executable, *extensions):
        libraries.update(_needed(loader, binary))
    for soname, path in sorted(libraries.items()):
        files[f"rt/lib/{soname}"] = (path.read_bytes(), 0o755)
    files[f"rt/lib/{Path(loader).name}"] = (Path(loader).read_bytes(), 0o755)
    return files


def _strip_debug(files: dict[str, File]) -> None:
    """Drop debugging sections from the programs and libraries, if this host has `strip`
    (a pyenv build's libpython carries 17 of its 23 MB in them); they run the same."""
    strip = shutil.which("strip")
    if strip is None:
        return
    programs = [name for name, (_, mode) in files.items() if mode & 0o111]
    with tempfile.TemporaryDirectory(prefix="insien-rt-") as scratch:
        paths = []
        for index, name in enumerate(programs):
            path = Path(scratch, str(index))
            path.write_bytes(files[name][0])
            paths.append(path)
        done = subprocess.run(
            [strip, "--strip-debug", *map(str, paths)], capture_output=True, check=False
        )
        if done.returncode != 0:
            log.info("keeping debugging sections: %s", done.stderr.decode(errors="replace"))
            return
        for name, path in zip(programs, paths, strict=True):
            files[name] = (path.read_bytes(), files[name][1])


def _cache_key(executable: Path, stdlib: Path, dynload: Path) -> str:
    """What the bundle is made from: the interpreter and standard library (by path, size and
    time), the agent's sources (its imports decide the subset), this builder, and `strip`."""
    h = hashlib.sha256()
    for path in (executable, stdlib / "os.py", dynload):
        found = path.stat()
        h.update(f"{path}\0{found.st_size}\0{found.st_mtime_ns}\0".encode())
    for source in (*sorted(agent_package_dir().glob("*.py")), Path(__file__)):
        h.update(source.name.encode() + b"\0" + source.read_bytes())
    h.update(str(shutil.which("strip")).encode())
    return h.hexdigest()[:24]


def _cache_dir() -> Path | None:
    """~/.cache/insien (or under XDG_CACHE_HOME); None for a user with no home."""
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "insien"
    except RuntimeError:
        return None


def _read_cached(path: Path) -> dict[str, File] | None:
    try:
        with tarfile.open(path) as tar:
            files: dict[str, File] = {}
            for member in tar.getmembers():
                read = tar.extractfile(member) if member.isfile() else None
                if read is not None:
                    files[member.name] = (read.read(), member.mode)
            return files
    except (OSError, tarfile.TarError):
        return None


def _write_cached(path: Path, files: dict[str, File]) -> None:
    """Best effort, atomically; older bundles of this host go (a server of another build
    makes its own again in a few seconds)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_bytes(archive(files))
        scratch.replace(path)
        for old in path.parent.glob(f"{CACHE_PREFIX}*.tar"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.info("agent runtime not cached: %s", exc)


def build(cache: Path | None = None) -> Bundle:
    """Pack this server's interpreter, the agent's standard library and their libraries, or
    read them from `cache` (a folder) where an earlier build of the same sources left them."""
    if sys.platform != "linux":
        raise RuntimeUnavailable(f"the host is {sys.platform}, not Linux")
    executable, stdlib, dynload = _sources()
    loader = _elf_interpreter(executable)
    if loader is None:
        raise RuntimeUnavailable(f"{executable} is not a dynamically linked 64-bit ELF program")
    cached = (
        cache / f"{CACHE_PREFIX}{_cache_key(executable, stdlib, dynload)}.tar" if cache else None
    )
    files = _read_cached(cached) if cached is not None else None
    if files is None:
        files = _gather(executable, loader, stdlib, dynload)
        _strip_debug(files)
        if cached is not None:
            _write_cached(cached, files)
    return Bundle(files, f"{LIB_DIR}/{Path(loader).name}")


@functools.cache
def bundle() -> Bundle | None:
    """This host's bundle, made on first use (a few seconds, then cached on disk); None if
    it cannot be made."""
    try:
        made = build(_cache_dir())
    except (RuntimeUnavailable, OSError) as exc:
        log.warning("sandboxes run the agent on their image's python3: %s", exc)
        return None
    log.info("agent runtime: %d files, %.1f MB", len(made.files), made.size / 1e6)
    return made


def archive(files: dict[str, File]) -> bytes:
    """A tar of `files` (relative paths), with their folders, root-owned and timestamp-free."""
    folders = sorted({str(p) for name in files for p in Path(name).parents if str(p) != "."})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name in sorted(files):
            content, mode = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = mode
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
