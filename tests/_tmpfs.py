"""A real, small disk for tests: a tmpfs mounted under the test's folder (CI runs as root)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str, *, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` (``32m``) mounted at ``folder/disk``, unmounted after; the test is
    skipped where mounting needs root it does not have, and fails where root cannot.
    ``inodes``: the files (its root folder among them) it holds at most."""
    mount = folder / "disk"
    mount.mkdir()
    options = f"size={size}" if inodes is None else f"size={size},nr_inodes={inodes}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        if os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root: {done.stderr.strip()}")
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
