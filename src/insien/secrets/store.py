"""The secret store: each tenant's named secrets, encrypted at rest with the operator's key.

Values are sealed with AES-256-GCM under a key derived (HKDF-SHA256) from `INSIEN_SECRETS_KEY`
(or the file `INSIEN_SECRETS_KEY_FILE` names), with the tenant and the name as associated
data, so a file copied to another tenant's folder or renamed does not open. Each tenant has its
own folder under `<state>/secrets/` named by a hash of its id. The server is the only writer:
what it wrote is kept in memory too, so a rotation or a deletion is in effect for the very
next request. Nothing here logs, formats or raises with a value.

Every method that may touch the disk is async (trio): its reads and writes (each an fsync)
run in worker threads, at most IO_THREADS at once per store, and changes are made one at a
time so two creates of one name cannot both pass the check. `value`, the proxy's read, is
sync and touches only memory: whoever calls it has awaited `load` for that tenant.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..egress.policy import SECRET_NAME

T = TypeVar("T")

MAX_SECRETS = 100
"""Per tenant."""
MAX_VALUE = 8192
MIN_KEY = 32
KEY_INFO = b"insien secrets v1"
IO_THREADS = 4
"""Worker threads one store's disk I/O may use at once (the rest wait their turn)."""


class SecretsUnavailable(Exception):
    """The operator gave no key: the server keeps no secrets."""


class SecretError(ValueError):
    """A name or value the store refuses (the message never holds the value)."""


class SecretNotFound(LookupError):
    pass


class SecretExists(Exception):
    pass


class TooManySecrets(Exception):
    pass


@dataclass(frozen=True)
class SecretInfo:
    """What anyone may see of a secret: never its value."""

    name: str
    description: str
    created_at: float
    updated_at: float
    version: int


@dataclass(frozen=True)
class _Entry:
    info: SecretInfo
    value: str


def load_key(key: str | None, key_file: Path | None) -> bytes | None:
    """The AES key from the operator's secret (or its file's first line); None if neither.
    ValueError for one too short to be a key."""
    if key is None and key_file is not None:
        lines = key_file.read_text().splitlines()
        key = lines[0].strip() if lines else ""
    if key is None:
        return None
    if len(key) < MIN_KEY:
        raise ValueError(f"INSIEN_SECRETS_KEY must be at least {MIN_KEY} characters")
    derive = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO)
    return derive.derive(key.encode())


def check_value(value: str) -> None:
    """A value the proxy can put in a header: one line, no NUL, at most MAX_VALUE bytes."""
    if not value:
        raise SecretError("a secret's value is not empty")
    if len(value.encode()) > MAX_VALUE:
        raise SecretError(f"a secret's value is at most {MAX_VALUE} bytes")
    if any(c in value for c in "\r\n\x00"):
        raise SecretError("a secret's value is one line (no CR, LF or NUL)")


def check_name(name: str) -> None:
    if not SECRET_NAME.fullmatch(name):
        raise SecretError(
            "a secret's name is a letter, then letters, digits or _ (at most 64 in all)"
        )


class SecretStore:
    """Every tenant's secrets; `None` key: every call raises SecretsUnavailable."""

    def __init__(self, folder: Path, key: bytes | None) -> None:
        self.folder = folder
        self._aead = AESGCM(key) if key is not None else None
        self._tenants: dict[str, dict[str, _Entry]] = {}
        self._threads: trio.CapacityLimiter | None = None
        self._changing: trio.Lock | None = None

    @property
    def available(self) -> bool:
        return self._aead is not None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            raise SecretsUnavailable(
                "this server keeps no secrets: its operator set no INSIEN_SECRETS_KEY "
                "(or INSIEN_SECRETS_KEY_FILE)"
            )
        return self._aead

    def _tenant_folder(self, tenant: str) -> Path:
        return self.folder / hashlib.sha256(tenant.encode()).hexdigest()[:32]

    @staticmethod
    def _file_name(name: str) -> str:
        # Names are case-insensitively unique, and some filesystems fold case.
        return hashlib.sha256(name.upper().encode()).hexdigest()[:32] + ".json"

    def _read(self, tenant: str) -> dict[str, _Entry]:
        """The tenant's secrets as its folder holds them (disk I/O: a worker thread's job)."""
        cipher = self._cipher()
        found: dict[str, _Entry] = {}
        folder = self._tenant_folder(tenant)
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                data = json.loads(path.read_text())
                name = str(data["name"])
                sealed = base64.b64decode(data["sealed"])
                value = cipher.decrypt(sealed[:12], sealed[12:], self._aad(tenant, name))
                info = SecretInfo(
                    name,
                    str(data.get("description", "")),
                    float(data["createdAt"]),
                    float(data["updatedAt"]),
                    int(data["version"]),
                )
            except (OSError, ValueError, KeyError, TypeError, InvalidTag):
                continue  # another key's, or damaged: as if absent (never half-trusted)
            found[name] = _Entry(info, value.decode())
        return found

    @staticmethod
    def _aad(tenant: str, name: str) -> bytes:
        return json.dumps([tenant, name]).encode()

    def _write(self, tenant: str, entry: _Entry) -> None:
        cipher = self._cipher()
        nonce = os.urandom(12)
        sealed = nonce + cipher.encrypt(
            nonce, entry.value.encode(), self._aad(tenant, entry.info.name)
        )
        record = {
            "name": entry.info.name,
            "description": entry.info.description,
            "createdAt": entry.info.created_at,
            "updatedAt": entry.info.updated_at,
            "version": entry.info.version,
            "sealed": base64.b64encode(sealed).decode(),
        }
        folder = self._tenant_folder(tenant)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / self._file_name(entry.info.name)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)

    @staticmethod
    def _made(entries: dict[str, _Entry], name: str, value: str, description: str) -> _Entry:
        """A new secret, if the tenant has room and no secret of that name (any case)."""
        if any(existing.upper() == name.upper() for existing in entries):
            raise SecretExists(f"a secret named {name!r} exists (rotate it with PUT)")
        if len(entries) >= MAX_SECRETS:
            raise TooManySecrets(f"a tenant keeps at most {MAX_SECRETS} secrets")
        now = time.time()
        return _Entry(SecretInfo(name, description, now, now, 1), value)

    @staticmethod
    def _rotated(
        entries: dict[str, _Entry], name: str, value: str, description: str | None
    ) -> _Entry:
        old = entries.get(name)
        if old is None:
            raise SecretNotFound(f"no secret named {name!r}")
        info = SecretInfo(
            name,
            old.info.description if description is None else description,
            old.info.created_at,
            time.time(),
            old.info.version + 1,
        )
        return _Entry(info, value)

    async def _in_thread(self, work: Callable[[], T]) -> T:
        if self._threads is None:
            self._threads = trio.CapacityLimiter(IO_THREADS)
        return await trio.to_thread.run_sync(work, limiter=self._threads)

    def _lock(self) -> trio.Lock:
        if self._changing is None:
            self._changing = trio.Lock()
        return self._changing

    async def load(self, tenant: str) -> None:
        """Have the tenant's secrets in memory, read in a worker thread if they are not yet
        (the server is the only writer, so what it read once stays true; after it, `value`
        answers for this tenant)."""
        self._cipher()
        if tenant not in self._tenants:
            read = await self._in_thread(lambda: self._read(tenant))
            self._tenants.setdefault(tenant, read)  # a change made meanwhile is the newer

    async def _entries(self, tenant: str) -> dict[str, _Entry]:
        await self.load(tenant)
        return self._tenants[tenant]

    async def list(self, tenant: str) -> builtins.list[SecretInfo]:
        """Names and metadata, by name; never a value."""
        entries = await self._entries(tenant)
        return sorted((e.info for e in entries.values()), key=lambda i: i.name)

    async def info(self, tenant: str, name: str) -> SecretInfo | None:
        entry = (await self._entries(tenant)).get(name)
        return entry.info if entry else None

    async def create(self, tenant: str, name: str, value: str, description: str = "") -> SecretInfo:
        """A new secret, written (fsynced) before it is answered or used."""
        check_name(name)
        check_value(value)
        async with self._lock():
            entries = await self._entries(tenant)
            entry = self._made(entries, name, value, description)
            await self._in_thread(lambda: self._write(tenant, entry))
            entries[name] = entry
            return entry.info

    async def rotate(
        self, tenant: str, name: str, value: str, description: str | None = None
    ) -> SecretInfo:
        """A new value (and description), in effect from the next request on."""
        check_value(value)
        async with self._lock():
            entries = await self._entries(tenant)
            entry = self._rotated(entries, name, value, description)
            await self._in_thread(lambda: self._write(tenant, entry))
            entries[name] = entry
            return entry.info

    async def delete(self, tenant: str, name: str) -> None:
        """Gone from memory at once (the proxy refuses the next request that needs it), its
        file removed in a worker thread."""
        async with self._lock():
            if (await self._entries(tenant)).pop(name, None) is None:
                raise SecretNotFound(f"no secret named {name!r}")
            path = self._tenant_folder(tenant) / self._file_name(name)
            await self._in_thread(lambda: path.unlink(missing_ok=True))

    def value(self, tenant: str, name: str) -> str | None:
        """The value, for the egress proxy only, from memory: None if the tenant has no such
        secret or the server has no key. RuntimeError if the tenant's secrets were never
        `load`ed (a caller's bug: this never reads the disk in the event loop)."""
        if not self.available:
            return None
        entries = self._tenants.get(tenant)
        if entries is None:
            raise RuntimeError("the tenant's secrets are not loaded: await load() first")
        entry = entries.get(name)
        return entry.value if entry else None
