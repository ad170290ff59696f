"""nftlb as an anchor for the benchmarks: run it in a namespace, load Services, read the kernel.

nftlb (Debian package `nftlb` 1.0.7) is a load balancer daemon that turns JSON "farms" posted
to its REST API into nftables rules. Each Kubernetes Service port maps to one farm:

    farm_body("svc-7", "10.96.0.7", 80, ["10.128.0.70", ...])   # dnat, rr, backends on 8080

Typical use (as root, inside a namespace this process created):

    proc = start(ns, 5555, "bench-key", workdir)
    client = Client(ns, 5555, "bench-key")
    client.post_farms([farm_body(...), ...])       # returns once the rules are committed
    client.set_backend_ip("svc-7", "b3", "10.200.0.1")
    stop(proc)

How nftlb talks and what it builds (checked on 1.0.7 with nft 1.0.6, kernel 6.18):

- Command line: `ip netns exec NS nftlb -k KEY -H 127.0.0.1 -P PORT -L 1 -l 5` runs in the
  foreground (`-d` would daemonize), logs to stdout (`-L 1`) at syslog level 5 (`-l`; 7 logs
  every attribute of every object, is huge and slows loading). It never removes its tables,
  not even on SIGTERM: use a fresh namespace per run.
- HTTP: every request needs the header `Key: KEY`. The server answers one request per
  connection and then closes it, without saying `Connection: close`, so there is no
  keep-alive: `Client` opens a connection per request. It is single-threaded (listen backlog
  2) and does all nft work before answering, so a POST's answer means "committed".
  Answers are `{"response": "success"}`; errors come as HTTP 400/404/500 with e.g.
  `{"response": "error deleting farm. Unknown farm 'x'"}`, and a warning as HTTP 200 with
  `"success. Parsing unknown value 'nonsense' in 'mode', using default 'snat'"`.
  `Client` raises NftlbError on both. A POST whose nft commands fail still answers
  "success" (see LIMITS).
- POST /farms merges: a farm named in the body is created or updated, attributes left out
  keep their value, a backend named in it is created or updated. DELETE
  /farms/F/backends/B removes one backend, DELETE /farms/F one farm.
- nftables: one table `ip nftlb` holding base chains `filter` (prerouting, mangle),
  `prerouting` (dnat), `postrouting` (srcnat), named verdict maps `filter-proto-services`
  and `nat-proto-services` (key `inet_proto . ipv4_addr . inet_service`, one element per
  farm and virtual port) and a map `services-back-m` (empty in dnat mode). Per farm: two
  chains, `filter-F` (one rule: `ct state new ct mark 0 ct mark set numgen inc mod N map
  {0: m1, ...}`) and `nat-F` (one rule: `dnat ip to ct mark map {m1: ip . port, ...}`),
  so the backend IPs live in an anonymous map inside the `nat-F` rule.
- Backend marks: each backend gets a mark unique over all farms, 0x1..0xfff, so at most
  4095 backends in total (see LIMITS). The mark goes into the packet and conntrack marks.
- Data plane (checked with client, nftlb and backend namespaces joined by veths): dnat
  mode needs no interface or MAC address, forwards with the namespace's ip_forward=1 and
  does not masquerade: backends see the client's address and must route replies back
  through the nftlb namespace (without that route connects time out). `rr` spreads new
  connections evenly over the backends. Only prerouting hooks are used, so connections
  made from inside the nftlb namespace itself are not balanced (the farm option
  `intra-connect` is off by default). Other ports of a VIP are just routed.
- `virtual-addr` is marked obsolete in the README (farms can reference `addresses`
  objects) but works: nftlb creates an address `F-addr` for it.
- A backend IP change is applied as two transactions: the backend is first taken out of
  the farm's two rules, then put back with its new address (rules deleted and re-added).

LIMITS: see the `LIMITS` string below (measured numbers).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nftproxy.kernel.netns import run_in_netns as lab_run_in_netns
from nftproxy.lab.processes import die_with_parent, stop_processes

T = TypeVar("T")

TABLE = "nftlb"  # table `ip nftlb`
NETNS_DIR = Path("/run/netns")
MAX_BACKENDS = 4095  # backend marks 0x1..0xfff, shared by all farms
DEFAULT_BATCH = 100  # farms per POST; batching neither helps nor hurts (see LIMITS)

LIMITS = """\
Measured with nftlb 1.0.7, nft 1.0.6, kernel 6.18, 2 vCPUs shared with other jobs (load ~5,
so wall times run up to 2x the CPU time; nftlb's user CPU is the stable number). One POST
of all farms unless said; each farm is one Service port with E backends.

  farms x E        POST wall      nftlb user CPU   farms in kernel    VmHWM
  100 x 10         0.5-1.0 s      0.43 s           100                 31 MB
  200 x 10         6.3 s          3.4 s            200                 58 MB
  300 x 10         23.6 s         12.1 s           300                 86 MB
  400 x 10         27.6-49.6 s    27.0 s           400                113 MB
  409 x 10         41.4 s         30.7 s           409                116 MB
  410 x 10         31.5 s         -                409 (svc409 lost)  116 MB
  1000 x 10        766 s (10 POSTs of 100)  400 s  409                269 MB
  3000 x 1         106.9 s        57.5 s (+18.7 sys) 3000             801 MB
  5000 x 10        not tried: 1000 x 10 already took 13 min and lost 591 farms

- Load time is cubic in the total number of backends B: each new backend's mark is found
  by trying marks 1, 2, ... and scanning every backend of every farm for each (perf: 99.8%
  of the time in backend_set_attribute). Batching does not help (400 x 10 in POSTs of 50:
  29.1 s). Starting with `-c FILE -e` costs the same (300 x 10: 11.4 s user).
- Cap: marks are 0x1..0xfff, so at most 4095 backends over all farms. The 4096th and later
  backends get mark 0x0; the farm holding one fails in nft with
  `nft command error : Error: Could not process rule: File exists` (duplicate key 0x0 in
  the anonymous map), then nftlb logs `recovery in progress...`, runs
  `delete table ip nftlb`, re-adds every farm one by one and logs `nft recovered...`
  (so every Service is briefly gone from the kernel), once per POST. The REST answer is
  still {"response": "success"}: the failure is silent; compare `farms_in_kernel()`.
  Past the cap each new backend scans all 4095 marks x all backends, so posts slow down
  further (batches of 100 farms: 34 s, 43 s, 99 s, 268 s, 256 s).
- Memory: about 280 KB RSS per farm (10 backends), ~265 KB per farm with 1 backend.
- Bodies: a 672 KB POST (3000 farms) was accepted; nothing limits size but the time.
- One change (`set_backend_ip`, 100..409 farms): POST round trip 20-40 ms, the new IP's
  `add rule` seen by `nft monitor` 12-30 ms after sending (up to 0.24 s / 0.22 s when
  the machine was loaded). It is two commits: the backend leaves both rules, then comes
  back with the new IP.
- Backends posted without "state": "up" (e.g. a new backend with only a name and an IP)
  are kept but never put in the rules.
"""


class NftlbError(RuntimeError):
    """nftlb refused a request, failed to start, or the kernel does not hold what it should."""


# -- namespaces ---------------------------------------------------------------------------


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call `fn` in a short-lived thread that entered network namespace `netns` (None: here).

    Sockets `fn` creates stay in that namespace and can be used from any thread; the
    calling thread never changes namespace."""
    if netns is None:
        return fn()
    return lab_run_in_netns(NETNS_DIR / netns, fn)


def nft(netns: str, *args: str, timeout: float = 600.0) -> str:
    """`nft ARGS` in `netns`; its stdout. Raises NftlbError on failure."""
    argv = ["ip", "netns", "exec", netns, "nft", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise NftlbError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


# -- the process --------------------------------------------------------------------------


# In the child: die with the parent, so a crashed benchmark leaves no nftlb behind.
_pdeathsig = functools.partial(die_with_parent, signal.SIGTERM)


def start(
    netns: str,
    port: int,
    key: str,
    workdir: Path,
    *,
    host: str = "127.0.0.1",
    log_level: int = 5,
    serial: bool = False,
    ready_timeout: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Start nftlb in the foreground inside `netns` (after setting its `lo` up), logging to
    `workdir/nftlb.log`.

    Returns once GET /farms answers. The Popen's pid is nftlb's own (`ip netns exec`
    execs it), so `/proc/<pid>/status` gives its RSS. Raises NftlbError (after stopping
    it) if it exits or does not answer within `ready_timeout` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    # the API listens on loopback: a new namespace has `lo` down
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    argv = ["ip", "netns", "exec", netns, "nftlb", "-k", key, "-H", host, "-P", str(port)]
    argv += ["-L", "1", "-l", str(log_level)]
    if serial:
        argv.append("-S")
    log_path = workdir / "nftlb.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pdeathsig,
        )
    client = Client(netns, port, key, host=host, timeout=2.0)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise NftlbError(f"nftlb exited with {proc.returncode}: {_tail(log_path)}")
        try:
            client.get_farms()
            return proc
        except (OSError, http.client.HTTPException, NftlbError):
            if time.monotonic() > deadline:
                stop(proc)
                raise NftlbError(
                    f"nftlb did not answer on {host}:{port} in {netns} within "
                    f"{ready_timeout} s: {_tail(log_path)}"
                ) from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only this process, by its PID."""
    stop_processes([proc], grace)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the REST API -------------------------------------------------------------------------


def farm_body(
    name: str,
    vip: str,
    port: int,
    backends: Sequence[str],
    *,
    backend_port: int = 8080,
    scheduler: str = "rr",
    protocol: str = "tcp",
) -> dict[str, Any]:
    """One farm: a Service port `vip:port` in dnat mode, backends `b0`, `b1`, ... on
    `backend_port`, everything `up`. No interface or MAC address is needed in dnat mode."""
    return {
        "name": name,
        "family": "ipv4",
        "virtual-addr": vip,
        "virtual-ports": str(port),
        "mode": "dnat",
        "protocol": protocol,
        "scheduler": scheduler,
        "state": "up",
        "backends": [
            {"name": f"b{i}", "ip-addr": ip, "port": str(backend_port), "state": "up"}
            for i, ip in enumerate(backends)
        ],
    }


class _NetnsConnection(http.client.HTTPConnection):
    """An HTTPConnection whose socket is created inside a network namespace."""

    def __init__(self, netns: str | None, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        def make() -> socket.socket:
            return socket.create_connection((self.host, self.port), self.timeout)

        self.sock = run_in_netns(self._netns, make)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Client:
    """nftlb's REST API at `host:port` inside `netns` (None: the caller's namespace).

    nftlb closes every connection after one answer, so each call opens a new one (a
    setns thread plus a TCP handshake on loopback: well under a millisecond)."""

    def __init__(
        self,
        netns: str | None,
        port: int,
        key: str,
        *,
        host: str = "127.0.0.1",
        timeout: float = 900.0,
    ) -> None:
        self.netns, self.port, self.key, self.host, self.timeout = netns, port, key, host, timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One request; the decoded JSON answer. Raises NftlbError unless HTTP 200 and,
        for POST/PUT/DELETE, exactly `{"response": "success"}` (warnings included)."""
        conn = _NetnsConnection(self.netns, self.host, self.port, self.timeout)
        try:
            data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
            conn.request(method, path, body=data, headers={"Key": self.key})
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = raw.decode(errors="replace")
        if status != 200:
            raise NftlbError(f"{method} {path}: HTTP {status}: {answer}")
        if method != "GET" and not (
            isinstance(answer, dict) and answer.get("response") == "success"
        ):
            raise NftlbError(f"{method} {path}: {answer}")
        return answer

    def get_farms(self) -> list[dict[str, Any]]:
        answer = self.request("GET", "/farms")
        farms: list[dict[str, Any]] = answer.get("farms", []) if isinstance(answer, dict) else []
        return farms

    def get_farm(self, name: str) -> dict[str, Any]:
        answer = self.request("GET", f"/farms/{name}")
        farms = answer.get("farms", []) if isinstance(answer, dict) else []
        if not farms:
            raise NftlbError(f"no farm {name}: {answer}")
        farm: dict[str, Any] = farms[0]
        return farm

    def post_farms(
        self,
        farms: Sequence[dict[str, Any]],
        batch: int = DEFAULT_BATCH,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        """POST the farms, `batch` per request; each answer comes after nftlb committed
        that batch's rules. `on_batch(farms_done, seconds_of_this_post)` after each."""
        for i in range(0, len(farms), batch):
            chunk = list(farms[i : i + batch])
            t0 = time.monotonic()
            self.request("POST", "/farms", {"farms": chunk})
            if on_batch is not None:
                on_batch(i + len(chunk), time.monotonic() - t0)

    def set_backend_ip(self, farm: str, backend: str, ip: str) -> None:
        """The one-endpoint change: backend `backend` of `farm` gets a new IP (nftlb takes
        it out of both rules, then re-adds it: two commits, done when this returns)."""
        self.request(
            "POST",
            "/farms",
            {"farms": [{"name": farm, "backends": [{"name": backend, "ip-addr": ip}]}]},
        )

    def add_backend(self, farm: str, backend: str, ip: str, port: int = 8080) -> None:
        body = {"name": backend, "ip-addr": ip, "port": str(port), "state": "up"}
        self.request("POST", "/farms", {"farms": [{"name": farm, "backends": [body]}]})

    def delete_backend(self, farm: str, backend: str) -> None:
        self.request("DELETE", f"/farms/{farm}/backends/{backend}")

    def delete_farm(self, farm: str) -> None:
        self.request("DELETE", f"/farms/{farm}")


# -- reading the kernel -------------------------------------------------------------------


def farms_in_kernel(netns: str) -> int:
    """Farm virtual ports the kernel holds: elements of the `nat-proto-services` vmap
    (one per farm and virtual port). One small listing, cheap at any size."""
    try:
        out = nft(netns, "-j", "list", "map", "ip", TABLE, "nat-proto-services")
    except NftlbError:
        return 0
    for item in json.loads(out).get("nftables", []):
        if "map" in item:
            return len(item["map"].get("elem", []))
    return 0


def _ip_pattern(ip: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\d.])" + re.escape(ip) + r" \. ")


def endpoint_in_kernel(netns: str, ip: str, farm: str | None = None) -> bool:
    """Whether backend `ip` is a dnat target in the kernel.

    With `farm`, lists only chain `nat-FARM` (its one rule holds the farm's backends as
    `mark : ip . port`); without, lists the whole table (slow at scale)."""
    if farm is not None:
        try:
            text = nft(netns, "list", "chain", "ip", TABLE, f"nat-{farm}")
        except NftlbError:
            return False
    else:
        text = nft(netns, "list", "table", "ip", TABLE)
    return _ip_pattern(ip).search(text) is not None


class Monitor:
    """`nft monitor rules` in `netns`, to time when a change reaches the kernel.

    nftlb re-adds a farm's `nat-F` rule with all its backends on every change, so the new
    backend IP appears in an `add rule ip nftlb nat-F ...` line. Start it before the
    change; `wait_for(ip)` returns the monotonic time the line was read."""

    def __init__(self, netns: str) -> None:
        argv = ["ip", "netns", "exec", netns, "stdbuf", "-oL", "nft", "monitor", "rules"]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=_pdeathsig,
        )
        self._lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.monotonic()
            with self._cond:
                self._lines.append((now, line))
                self._cond.notify_all()

    def wait_for(self, ip: str, timeout: float = 10.0, since: float = 0.0) -> float | None:
        """Time (monotonic) of the first `add rule` line after `since` naming `ip` as a
        dnat target; None after `timeout` seconds."""
        pattern = _ip_pattern(ip)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for t, line in self._lines[seen:]:
                    if t >= since and line.startswith("add rule") and pattern.search(line):
                        return t
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(2)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
        self._reader.join(2)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def total_backends(farms: Iterable[dict[str, Any]]) -> int:
    """Backends in farm bodies; nftlb silently drops farms past `MAX_BACKENDS` in all."""
    return sum(len(f.get("backends", [])) for f in farms)


def sample_ips(farms: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(farm name, backend IP) of every backend in farm bodies, for spot checks."""
    return [(f["name"], b["ip-addr"]) for f in farms for b in f.get("backends", [])]
