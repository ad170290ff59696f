"""What the benchmarks share: machine facts, addresses, and the markdown section writer."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nftproxy.lab.apiserver import ControlPlane

ROOT = Path(__file__).resolve().parent.parent


def ip4(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def proc_mem_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of one process, in MB."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int, *, children: bool = False) -> float:
    """user + system CPU seconds of one process (all its threads); with `children`, those
    of its children it has waited for instead."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    first = 13 if children else 11  # cutime, cstime or utime, stime
    return (int(fields[first]) + int(fields[first + 1])) / _CLK_TCK


class Api:
    """The control plane's API as its admin: keep-alive HTTPS, one connection per thread."""

    def __init__(self, cp: ControlPlane) -> None:
        self.port = cp.port
        self.token = cp.admin_token
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
            self.local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw[:1] == b"{" else raw.decode()
            except (OSError, http.client.HTTPException):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def machine_info(**extra: str) -> dict[str, Any]:
    """The machine and source a result came from, recorded with every result."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": _cmd("nproc"),
        "kernel": _cmd("uname", "-r"),
        "nft": _cmd("nft", "--version"),
        "cpu": cpu,
        "python": platform.python_version(),
        "mem_total": _cmd("sh", "-c", "grep MemTotal /proc/meminfo | tr -s ' '"),
        "source_commit": _cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "source_modified": _cmd("git", "-C", str(ROOT), "status", "--porcelain", "--", "src"),
        **extra,
    }


def write_markdown(path: Path, section: str, begin_marker: str, end_marker: str) -> None:
    """Replace the section between the markers in `path` (append it when missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin != -1 and end > begin:
        text = text[:begin] + section + text[end + len(end_marker) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def save_report(
    report: dict[str, Any],
    out: Path,
    markdown_path: str,
    markdown: Callable[[dict[str, Any]], str],
    markers: tuple[str, str],
    log: Callable[[str], None],
) -> None:
    """Write the JSON result and, when there are results, the markdown section."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log(f"wrote {out}")
    if markdown_path and report["results"]:
        write_markdown(Path(markdown_path), markdown(report), *markers)
        log(f"updated {markdown_path}")


# --- network namespaces the benchmark creates, removed again whatever happens --------------

_created: list[str] = []


def netns_add(name: str) -> str:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    _created.append(name)
    return name


def netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    if name in _created:
        _created.remove(name)


def netns_del_all() -> None:
    for name in list(_created):
        netns_del(name)


def on_signal(signum: int, _frame: object) -> None:
    """For SIGTERM/SIGHUP: an exception, so that every `finally` (namespace removal) runs."""
    raise KeyboardInterrupt(f"signal {signum}")
