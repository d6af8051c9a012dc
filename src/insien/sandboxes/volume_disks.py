"""Volume disks: a filesystem of its own for each volume, so its size limit is the kernel's
(a write past it fails with ENOSPC inside the sandbox) and not only the server's accounting.

Docker's `local` driver cannot cap a named volume on overlay2 over ext4 (no quota), and a
`tmpfs` volume is bounded but forgets its files once no container mounts it. What it can do
is mount a block device: each volume gets a sparse ext4 image file in the server's state
folder, attached to a loop device, and the Docker volume mounts that device (`type=ext4`) by a
stable symlink in the same folder, repointed whenever the loop is attached again (after a
reboot loop devices are gone; `attach` runs before every mount). A volume whose disk cannot be
attached fails to mount loudly: it never silently mounts an empty folder instead.

This needs the server to run as root on the Docker host, with `/dev/loop-control`, `losetup`
and `mkfs.ext4` (`INSIEN_VOLUME_DISKS=auto` uses disks exactly then); the packaged
deployment (an unprivileged user in a container) has none of these and keeps the accounting.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import trio

from ..runtime.base import RuntimeFailure

log = logging.getLogger("insien.volumes")

BLOCK = 1 << 20
SIZING_ROUNDS = 4
"""mkfs passes to grow the image until its free space holds the whole size limit (ext4's
metadata, journal and inode tables take 4 to 13 % depending on the size)."""


def disks_possible() -> bool:
    """Whether this process can make and attach loop-mounted disks."""
    return (
        os.geteuid() == 0
        and os.path.exists("/dev/loop-control")
        and shutil.which("losetup") is not None
        and shutil.which("mkfs.ext4") is not None
        and shutil.which("dumpe2fs") is not None
    )


def _sparse(path: Path, size: int) -> None:
    """An empty file of `size` bytes taking no blocks (mkfs writes only its metadata)."""
    with path.open("wb") as made:
        made.truncate(size)


async def _run(*argv: str) -> str:
    """A tool's stdout; RuntimeFailure naming its stderr when it fails."""
    try:
        done = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True)
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"{argv[0]} is not installed") from exc
    except OSError as exc:
        raise RuntimeFailure(f"{argv[0]}: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace").strip() if exc.stderr else ""
        raise RuntimeFailure(f"{' '.join(argv[:2])} failed: {stderr}") from None
    return bytes(done.stdout).decode(errors="replace")


class VolumeDisks:
    """The image files and loop devices behind volumes, in one folder (`<name>.img` and the
    `<name>.dev` symlink Docker's volume options name)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._locks: dict[str, trio.Lock] = {}

    def image(self, name: str) -> Path:
        return self.folder / f"{name}.img"

    def device(self, name: str) -> Path:
        """What the Docker volume mounts: a symlink to the loop device of the image."""
        return self.folder / f"{name}.dev"

    def has(self, name: str) -> bool:
        return self.image(name).exists()

    def _lock(self, name: str) -> trio.Lock:
        return self._locks.setdefault(name, trio.Lock())

    async def make(self, name: str, size_limit: int) -> Path:
        """An ext4 image with at least `size_limit` bytes free, attached; its device path."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        image = self.image(name)
        size = -(-size_limit // BLOCK) * BLOCK
        try:
            for _ in range(SIZING_ROUNDS):
                await trio.to_thread.run_sync(_sparse, image, size)
                # -m 0: no blocks kept for root (the sandbox user owns the volume);
                # lazy init: the image stays sparse, made in milliseconds.
                await _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
                free = await self._free_bytes(image)
                if free >= size_limit:
                    break
                size += -(-(size_limit - free) // BLOCK) * BLOCK
            else:
                raise RuntimeFailure(f"could not size a disk for {size_limit} bytes")
            return await self.attach(name)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.remove(name)
            raise

    @staticmethod
    async def _free_bytes(image: Path) -> int:
        header = await _run("dumpe2fs", "-h", str(image))
        fields = {
            key.strip(): value.strip()
            for key, _, value in (line.partition(":") for line in header.splitlines())
        }
        return int(fields["Free blocks"]) * int(fields["Block size"])

    @staticmethod
    def _backing(device: str) -> str | None:
        """The file a loop device is attached to (None: detached, or not a loop)."""
        try:
            return (
                Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file").read_text().strip()
            )
        except OSError:
            return None

    async def attach(self, name: str) -> Path:
        """Make sure the image is on a loop device and the symlink points at it."""
        image, link = self.image(name), self.device(name)
        async with self._lock(name):
            if not image.exists():
                raise RuntimeFailure(f"the disk of volume {name} is missing ({image})")
            try:
                current: str | None = os.readlink(link)
            except OSError:
                current = None
            if current is not None and self._backing(current) == str(image):
                return link
            listed = await _run("losetup", "--associated", str(image), "--noheadings", "-O", "NAME")
            found = listed.split()
            loop = (
                found[0]
                if found
                else (await _run("losetup", "--find", "--show", str(image))).strip()
            )
            if not loop.startswith("/dev/loop"):
                raise RuntimeFailure(f"losetup answered {loop!r} for {image}")
            temporary = link.with_suffix(".dev-new")
            temporary.unlink(missing_ok=True)
            os.symlink(loop, temporary)
            os.replace(temporary, link)
            log.info("volume %s: disk on %s", name, loop)
            return link

    async def remove(self, name: str) -> None:
        """Detach the image's loop devices and delete it (nothing mounts it by now)."""
        image = self.image(name)
        async with self._lock(name):
            if image.exists():
                listed = await _run(
                    "losetup", "--associated", str(image), "--noheadings", "-O", "NAME"
                )
                for loop in listed.split():
                    await _run("losetup", "--detach", loop)
            self.device(name).unlink(missing_ok=True)
            image.unlink(missing_ok=True)
        self._locks.pop(name, None)


__all__ = ["VolumeDisks", "disks_possible"]
