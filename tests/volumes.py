"""A real, size-limited volume for disk-full tests: a tmpfs mounted as root, and a filler."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size_mib: int) -> Iterator[Path]:
    """Mount a ``size_mib`` MiB tmpfs at ``mountpoint`` (made here) for the ``with`` block.

    Fails the test (never skips: CI must run it) when mount(8) is missing or refuses (not root).
    """
    mountpoint.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.fail("the disk-full tests need mount(8) and umount(8) to mount a tmpfs")
    result = subprocess.run(  # noqa: S603
        [mount, "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            "cannot mount a size-limited tmpfs (needs root and mount(2)): "
            f"{result.stderr.strip() or result.returncode}"
        )
    try:
        yield mountpoint
    finally:
        subprocess.run([umount, "-l", str(mountpoint)], check=False)  # noqa: S603


def fill(path: Path) -> int:
    """Write zeros to ``path`` until its volume is full; returns how many bytes it took."""
    chunk = b"\0" * 65_536
    written = 0
    with path.open("wb", buffering=0) as file:
        for size in (65_536, 4096, 512, 1):
            try:
                while True:
                    written += file.write(chunk[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return written
