"""Cleaning up after volume tests: a test server's volumes removed straight from Docker leave
their disks (an image file on a loop device, `sandboxes/volume_disks.py`) behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest

from insien.sandboxes.volume_disks import disks_possible
from tests.server_process import STATE_DIR

DISKS = Path(STATE_DIR) / "volume-disks"
NEEDS_DISKS = pytest.mark.skipif(
    not disks_possible(),
    reason="a volume's own disk needs root, /dev/loop-control, losetup and mkfs.ext4"
    " (INSIEN_VOLUME_DISKS=auto falls back to the server's accounting without them)",
)


def remove_volumes(client: docker.DockerClient, instance: str) -> None:
    """Every volume a test server of `instance` made, and the disks of any that are gone."""
    for volume in client.volumes.list(filters={"label": f"insien.volume.instance={instance}"}):
        volume.remove(force=True)
    present = {volume.name for volume in client.volumes.list()}
    for image in DISKS.glob("*.img") if DISKS.is_dir() else []:
        if image.stem in present:
            continue  # another server's of this run, still in use
        listed = subprocess.run(
            ["losetup", "--associated", str(image), "--noheadings", "-O", "NAME"],
            capture_output=True,
            text=True,
            check=False,
        )
        for loop in listed.stdout.split():
            subprocess.run(["losetup", "--detach", loop], check=False)
        image.with_suffix(".dev").unlink(missing_ok=True)
        image.unlink(missing_ok=True)
