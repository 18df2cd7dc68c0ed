"""Another user for tests of what root's scripts accept: uid 65534 (``nobody``) through ``setpriv``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="switching to another user needs root and setpriv"
)


@contextmanager
def folder_under_tmp(prefix: str, mode: int) -> Iterator[Path]:
    """A root-owned folder under /tmp with ``mode`` (0o777: uid 65534 may write it; 0o1777: like /var/tmp),
    removed afterwards (pytest's own tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path)
