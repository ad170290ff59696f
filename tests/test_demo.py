"""`nftproxy demo`, the README's main job, run as a user would."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.support.kernel import require_kernel


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_demo_balances_traffic_rebalances_on_scaling_and_cleans_up():
    require_kernel()
    out = subprocess.run(
        [sys.executable, "-m", "nftproxy", "demo", "--duration", "9", "--live", "no"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "nftproxy synced both nodes; traffic flows" in text
    assert "scaled web up" in text and "scaled web down" in text
    assert re.search(r"\d+ connections, 0 failed", text)
    # Before scaling, all four first pods answered through the LoadBalancer IP. The first
    # screen alone holds 100 web connections (60 via the LB IP, 40 via the NodePort), so a
    # correct proxy leaves a pod out with probability at most 4 * (3/4)^100 = 1.3e-12.
    first_screen = text.split("\n\n\n")[0]
    for pod in ("pod-1", "pod-2", "pod-3", "pod-4"):
        assert re.search(rf"{pod}\s+\d+/s", first_screen)
    # Everything the demo created (named with its lab's prefix) is gone.
    prefix = re.search(r"lab (nftp-[0-9a-f]+)", text).group(1)
    assert not {ns for ns in namespaces() if ns.startswith(prefix)}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_demo_without_root_says_what_is_missing():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "nftproxy",
            "demo",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert out.returncode == 1
    assert "needs root" in out.stderr


@pytest.mark.parametrize("duration", ["0", "-5", "nan", "inf"])
def test_a_duration_that_is_not_positive_and_finite_is_a_usage_error(duration):
    out = subprocess.run(
        [sys.executable, "-m", "nftproxy", "demo", "--duration", duration],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "--duration" in out.stderr
    assert ("is not a finite number" if duration == "inf" else "is not more than 0") in out.stderr


def gone(prefix: str) -> bool:
    return not {ns for ns in namespaces() if ns.startswith(prefix + "-")}


def test_on_a_terminal_the_demo_redraws_one_table_in_place(tmp_path):
    require_kernel()
    master, slave = pty.openpty()
    with open(tmp_path / "stderr", "wb") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nftproxy", "demo", "--duration", "3"],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=errors,
        )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the demo closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=180) == 0, (tmp_path / "stderr").read_text()
    text = b"".join(chunks).decode()
    # The terminal turns each \n into \r\n. Each table after the first starts by moving
    # the cursor up over the one before, whose lines it then overwrites.
    tables = re.split(r"\r\x1b\[(\d+)A", text.split("\r\n\r\n")[0])
    frames, heights = tables[0::2], [int(h) for h in tables[1::2]]
    assert len(frames) >= 2, text
    for frame, height in zip(frames, heights, strict=False):
        assert frame.count("\r\n") == height
        assert frame.startswith("nftproxy demo:")
    assert "\x1b[2J" not in text
    prefix = re.search(r"lab (nftp-[0-9a-f]+)", text).group(1)
    assert gone(prefix)


def test_ctrl_c_ends_the_demo_saying_what_it_removed(tmp_path):
    require_kernel()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nftproxy", "demo", "--duration", "120", "--live", "no"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As at a terminal: a shell that started the tests in the background hands its
        # children SIGINT ignored, and a Ctrl-C that cannot arrive proves nothing.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    assert proc.stdout is not None
    with proc.stdout:
        try:
            for line in proc.stdout:
                lines.append(line)
                if "traffic flows" in line:
                    proc.send_signal(signal.SIGINT)
                    break
            rest = proc.stdout.read()
        finally:
            if proc.poll() is None and not any("traffic flows" in line for line in lines):
                proc.kill()
    assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    said = re.search(
        r"interrupted: removed lab (nftp-[0-9a-f]+): the (\d+) processes it started and "
        r"its (\d+) network namespaces \(([^)]*)\)",
        rest,
    )
    assert said, rest
    prefix, names = said.group(1), said.group(4).split(", ")
    assert len(names) == int(said.group(3)) and int(said.group(2)) > 0
    assert all(name.startswith(prefix + "-") for name in names)
    assert not set(names) & namespaces()
    assert gone(prefix)
    assert "Traceback" not in rest
