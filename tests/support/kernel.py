"""Helpers for real-kernel tests.

A test that needs root, `ip` or nftables skips on a user's machine with a message naming
the missing part; under CI (CI=true) a missing part fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _missing_kernel_parts() -> str | None:
    if os.geteuid() != 0:
        return "root (network namespaces need CAP_SYS_ADMIN)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (Debian packages iproute2, nftables)"
    try:
        import ctypes.util

        if ctypes.util.find_library("nftables") is None:
            return "libnftables.so.1 (Debian package libnftables1)"
    except OSError:
        return "libnftables.so.1 (Debian package libnftables1)"
    return None


def require_kernel() -> None:
    missing = _missing_kernel_parts()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run kernel tests, but this machine lacks {missing}")
    pytest.skip(f"needs {missing}")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def nft_in(netns: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"nft {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def require_root() -> None:
    """require_kernel without libnftables: what the element-writer tests need."""
    missing = None
    if os.geteuid() != 0:
        missing = "root (network namespaces and nftables need CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    elif shutil.which("ip") is None or shutil.which("nft") is None:
        missing = "the `ip` and `nft` commands (Debian packages iproute2, nftables)"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run kernel tests, but this machine lacks {missing}")
    pytest.skip(f"needs {missing}")
