"""Build a `Topology` out of network namespaces (`Lab`), run things in it, tear it all down:

    with Lab.create(default_topology()) as lab:
        lab.start_echo("pod-3", tcp=[8080])
        result = lab.connect("pod-1", "10.244.2.10", 8080, count=5)

Nothing is ever connected to the calling namespace. How it is wired: `Lab`."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Literal, TypeVar

from nftproxy.kernel.netns import run_in_netns
from nftproxy.lab.processes import stop_processes
from nftproxy.lab.result import Result
from nftproxy.lab.session import EchoSession
from nftproxy.lab.topology import External, Node, Pod, Topology, default_topology

__all__ = [
    "BRIDGE",
    "COMMON_SYSCTLS",
    "NETNS_DIR",
    "NODE_SYSCTLS",
    "POD_GW4",
    "POD_GW6",
    "POD_IF",
    "PREFIX_BASE",
    "UPLINK",
    "Lab",
    "LabError",
    "Started",
    "Who",
    "new_prefix",
    "pod_veth",
    "uplink_peer",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
PREFIX_BASE = "nftp"
BRIDGE = "br0"
UPLINK = "eth0"
POD_IF = "eth0"
POD_GW4 = "169.254.1.1"
POD_GW6 = "fe80::1"

COMMON_SYSCTLS = (
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)
NODE_SYSCTLS = ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

Who = str | Node | Pod | External


class LabError(RuntimeError):
    """A lab command failed; the message names the command, namespace and stderr."""


def new_prefix() -> str:
    """A run prefix no existing namespace uses: `nftp-<6 hex>`."""
    existing = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
    for _ in range(100):
        prefix = f"{PREFIX_BASE}-{secrets.token_hex(3)}"
        if not any(name.startswith(prefix + "-") for name in existing):
            return prefix
    raise LabError("no free namespace prefix after 100 tries")


def _ifname(base: str, name: str) -> str:
    """An interface name (at most 15 bytes) from a readable base or a hash of it."""
    candidate = f"{base}-{name}"
    if len(candidate) <= 15:
        return candidate
    return f"{base}-{hashlib.sha256(name.encode()).hexdigest()[: 14 - len(base)]}"


def pod_veth(pod: Pod | str) -> str:
    """The node's end of a pod's veth."""
    return _ifname("v", pod.name if isinstance(pod, Pod) else pod)


def uplink_peer(name: str) -> str:
    """The bridge namespace's end of a node's (or the external client's) uplink."""
    return _ifname("up", name)


_live: list[Lab] = []
_saved_handlers: dict[int, object] = {}
_atexit_registered = False
_cleanup_depth = 0
_deferred_signals: list[int] = []
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _destroy_live(which: Literal["atexit", "signal"]) -> None:
    for lab in list(_live):
        if (lab.atexit_cleanup if which == "atexit" else lab.signal_cleanup) and not lab.destroyed:
            try:
                lab.destroy()
            except Exception as exc:  # report and go on with the others
                print(f"nftproxy.lab: cleanup of {lab.prefix} failed: {exc}", file=sys.stderr)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _cleanup_depth:  # a destroy() is running: finish it, then handle the signal
        _deferred_signals.append(signum)
        return
    # Looked up first: destroying the last lab restores (and forgets) the saved handlers.
    previous = _saved_handlers.get(signum, signal.SIG_DFL)
    _destroy_live("signal")
    _restore_handlers()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default action: die of the same signal
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; atexit still covers us
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if current is _on_signal or current == signal.SIG_IGN:
            continue
        _saved_handlers[sig] = current if current is not None else signal.SIG_DFL
        signal.signal(sig, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in list(_saved_handlers.items()):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, previous)  # type: ignore[arg-type]
        del _saved_handlers[sig]


def _register(lab: Lab) -> None:
    global _atexit_registered
    _live.append(lab)
    if lab.atexit_cleanup and not _atexit_registered:
        atexit.register(_destroy_live, "atexit")
        _atexit_registered = True
    if lab.signal_cleanup:
        _install_handlers()


def _unregister(lab: Lab) -> None:
    if lab in _live:
        _live.remove(lab)
    if not any(other.signal_cleanup for other in _live):
        _restore_handlers()


@contextlib.contextmanager
def _cleaning() -> Iterator[None]:
    """Defer SIGINT/SIGTERM handling (ours) until the enclosed cleanup is done."""
    global _cleanup_depth
    _cleanup_depth += 1
    try:
        yield
    finally:
        _cleanup_depth -= 1
        if not _cleanup_depth and _deferred_signals:
            signum = _deferred_signals[0]
            _deferred_signals.clear()
            _on_signal(signum, None)


# -- the lab --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """A process the lab started: where, what, and its log (stdout and stderr)."""

    ns: str
    argv: tuple[str, ...]
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


class Lab:
    """A built topology. Use `Lab.create(...)`, best as a context manager.

    Every namespace is named `<prefix>-<name>` with a fresh prefix `nftp-<6 hex>`:
    `<prefix>-net` holds the bridge `br0`, the shared link of the nodes and the external
    client, each of which has an `eth0` veth into it. Pods hang off their node by a veth
    (`eth0` in the pod, `v-<pod>` in the node), Calico-style: the pod's gateway is
    169.254.1.1 (fe80::1 for IPv6), an address of the node's end, and the node routes the
    pod's /32 (/128) to that veth. Every command names a namespace this lab created
    (`ip -n`, `ip netns exec`).

    Sysctls in every lab namespace: IPv6 DAD off (addresses work at once) and `rp_filter=0`
    (new namespaces inherit IPv4 defaults from the host: this makes the lab behave the same
    everywhere). Nodes also forward IPv4 and IPv6.

    `destroy()` (also on leaving `with`, at interpreter exit and on SIGTERM/SIGINT unless
    opted out) stops the processes the lab started, by PID (SIGTERM, SIGKILL after 2 s),
    and deletes its namespaces. It is idempotent; so is building (`ensure()`).
    """

    def __init__(
        self,
        topology: Topology,
        *,
        prefix: str | None = None,
        atexit_cleanup: bool = True,
        signal_cleanup: bool = True,
        keep_logs: bool = False,
    ) -> None:
        if os.geteuid() != 0:
            raise LabError("a lab needs root (CAP_SYS_ADMIN) to create network namespaces")
        if shutil.which("ip") is None:
            raise LabError("a lab needs the `ip` command (iproute2)")
        self.topology = topology
        self.prefix = prefix or new_prefix()
        self.atexit_cleanup = atexit_cleanup
        self.signal_cleanup = signal_cleanup
        self.keep_logs = keep_logs
        self.destroyed = False
        self._owned: list[str] = []  # namespaces this lab created (or is creating), in order
        self._started: list[Started] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        _register(self)

    @classmethod
    def create(
        cls,
        topology: Topology | None = None,
        *,
        prefix: str | None = None,
        atexit_cleanup: bool = True,
        signal_cleanup: bool = True,
        keep_logs: bool = False,
    ) -> Lab:
        """Build `topology` (default: 2 nodes with 2 pods each); on any failure, including
        KeyboardInterrupt, tear down what was built and re-raise."""
        lab = cls(
            topology or default_topology(),
            prefix=prefix,
            atexit_cleanup=atexit_cleanup,
            signal_cleanup=signal_cleanup,
            keep_logs=keep_logs,
        )
        try:
            lab.ensure()
        except BaseException:
            with contextlib.suppress(Exception):
                lab.destroy()
            raise
        return lab

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def __repr__(self) -> str:
        state = "destroyed" if self.destroyed else f"{len(self._owned)} namespaces"
        return f"<Lab {self.prefix}: {state}>"

    # -- names ------------------------------------------------------------------------------

    def ns(self, who: Who) -> str:
        """The namespace of a node, pod, the external client ("ext") or the bridge ("net");
        a full namespace name of this lab is returned as is."""
        name = who if isinstance(who, str) else who.name
        if name == "net" or name in self.topology.names:
            return f"{self.prefix}-{name}"
        if name.startswith(self.prefix + "-") and name in self._owned:
            return name
        raise KeyError(f"{name!r} is not part of lab {self.prefix}")

    def ns_path(self, who: Who) -> Path:
        return NETNS_DIR / self.ns(who)

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this lab created and has not deleted yet."""
        return list(self._owned)

    @property
    def processes(self) -> list[Started]:
        return list(self._started)

    # -- commands -------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.destroyed:
            raise LabError(f"lab {self.prefix} is destroyed")

    def _own(self, ns: str) -> str:
        if ns not in self._owned:
            raise LabError(f"refusing to touch namespace {ns!r}: lab {self.prefix} did not make it")
        return ns

    def _run(self, argv: Sequence[str], *, what: str, timeout: float = 30.0) -> str:
        log.debug("%s: %s", what, " ".join(argv))
        try:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout, check=True
            )
        except subprocess.CalledProcessError as exc:
            raise LabError(
                f"{what}: `{' '.join(argv)}` failed (exit {exc.returncode}): "
                f"{(exc.stderr or '').strip() or '(no message)'}"
            ) from None
        except subprocess.TimeoutExpired:
            raise LabError(f"{what}: `{' '.join(argv)}` took over {timeout}s") from None
        return proc.stdout

    def _ip(self, ns: str, *args: str) -> str:
        """`ip -n NS ...`, only for namespaces of this lab."""
        return self._run(["ip", "-n", self._own(ns), *args], what=f"in {ns}")

    def _has_link(self, ns: str, dev: str) -> bool:
        proc = subprocess.run(
            ["ip", "-n", self._own(ns), "link", "show", "dev", dev],
            capture_output=True,
            check=False,
            timeout=30,
        )
        return proc.returncode == 0

    def _sysctl(self, ns: str, settings: Iterable[str]) -> None:
        self._run(
            ["ip", "netns", "exec", self._own(ns), "sysctl", "-q", "-w", *settings],
            what=f"sysctl in {ns}",
        )

    def exec(
        self,
        who: Who,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside a lab namespace (`ip netns exec`) and wait for it; output is
        captured as text. With `check`, a failure raises LabError naming the command."""
        self._check_alive()
        ns = self._own(self.ns(who))
        full = ["ip", "netns", "exec", ns, *argv]
        try:
            proc = subprocess.run(
                full, capture_output=True, text=True, timeout=timeout, input=input, env=env
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"in {ns}: `{' '.join(argv)}` took over {timeout}s") from None
        if check and proc.returncode != 0:
            raise LabError(
                f"in {ns}: `{' '.join(argv)}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip() or '(no output)'}"
            )
        return proc

    def spawn(self, who: Who, argv: Sequence[str], *, log_name: str | None = None) -> Started:
        """Start `argv` in the background inside a lab namespace; stdout and stderr go to
        a log file in `workdir`. `destroy()` (or `stop()`) ends it by PID."""
        self._check_alive()
        ns = self._own(self.ns(who))
        base = log_name or f"{ns.removeprefix(self.prefix + '-')}-{Path(argv[0]).name}"
        path = self.workdir / f"{base}-{len(self._started)}.log"
        with open(path, "wb") as out:
            # `ip netns exec` execs the command itself (no fork), so this PID is the command's.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started = Started(ns=ns, argv=tuple(argv), log=path, proc=proc)
        self._started.append(started)
        return started

    def stop(self, started: Started | Iterable[Started]) -> None:
        """SIGTERM, then SIGKILL after 2 s, to processes this lab started."""
        items = [started] if isinstance(started, Started) else list(started)
        for item in items:
            if item not in self._started:
                raise LabError(f"process {item.pid} was not started by lab {self.prefix}")
        stop_processes(item.proc for item in items)
        for item in items:
            self._started.remove(item)

    # -- building ---------------------------------------------------------------------------

    def _add_netns(self, ns: str, sysctls: Sequence[str]) -> None:
        self._check_alive()
        if ns not in self._owned:
            if (NETNS_DIR / ns).exists():
                raise LabError(f"namespace {ns} already exists and is not this lab's")
            self._owned.append(ns)  # before creating: a failure halfway is still cleaned up
            self._run(["ip", "netns", "add", ns], what="create namespace")
        self._ip(ns, "link", "set", "lo", "up")
        self._sysctl(ns, sysctls)

    def _uplink(
        self, ns: str, name: str, ip4: str, ip6: str, extra_ips: Sequence[str] = ()
    ) -> None:
        net = self.ns("net")
        peer = uplink_peer(name)
        if not self._has_link(ns, UPLINK):
            self._ip(ns, "link", "add", UPLINK, "type", "veth", "peer", "name", peer, "netns", net)
        self._ip(net, "link", "set", peer, "master", BRIDGE, "up")
        # ip4 and ip6 go first: they are what the kernel picks to masquerade to.
        for addr in (ip4, ip6, *extra_ips):
            if ":" in addr:
                self._ip(ns, "-6", "addr", "replace", self._on_link(addr), "dev", UPLINK, "nodad")
            else:
                self._ip(ns, "addr", "replace", self._on_link(addr), "dev", UPLINK)
        self._ip(ns, "link", "set", UPLINK, "up")

    def _plen(self, family: int) -> str:
        link = self.topology.link4 if family == 4 else self.topology.link6
        return link.rsplit("/", 1)[1]

    def _in_link(self, addr: str) -> bool:
        ip = ipaddress.ip_address(addr)
        link = self.topology.link4 if ip.version == 4 else self.topology.link6
        return ip in ipaddress.ip_network(link)

    def _on_link(self, addr: str) -> str:
        """The address with the link's prefix length, or as a host address off the link."""
        if self._in_link(addr):
            return f"{addr}/{self._plen(ipaddress.ip_address(addr).version)}"
        return f"{addr}/{ipaddress.ip_address(addr).max_prefixlen}"

    def ensure(self) -> None:
        """Build whatever of the topology is missing; safe to run again."""
        topo = self.topology
        net = self.ns("net")
        self._add_netns(net, COMMON_SYSCTLS)
        if not self._has_link(net, BRIDGE):
            self._ip(net, "link", "add", BRIDGE, "type", "bridge")
        # No STP (ports forward at once) and no multicast snooping (NDP just floods).
        self._ip(
            net, "link", "set", BRIDGE, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"
        )
        self._ip(net, "link", "set", BRIDGE, "up")

        ext = self.ns(topo.ext)
        self._add_netns(ext, (*COMMON_SYSCTLS, *(NODE_SYSCTLS if topo.ext_router else ())))
        self._uplink(ext, topo.ext.name, topo.ext.ip4, topo.ext.ip6, topo.ext.extra_ips)

        for node in topo.nodes:
            ns = self.ns(node)
            self._add_netns(ns, (*COMMON_SYSCTLS, *NODE_SYSCTLS))
            self._uplink(ns, node.name, node.ip4, node.ip6, node.extra_ips)
            for other in topo.nodes:
                if other.name != node.name:
                    self._ip(ns, "route", "replace", other.pod_cidr4, "via", other.ip4)
                    self._ip(ns, "-6", "route", "replace", other.pod_cidr6, "via", other.ip6)
            # Locally generated Service traffic needs some route before it is DNATed.
            self._ip(ns, "route", "replace", "default", "via", topo.ext.ip4, "dev", UPLINK)
            self._ip(ns, "-6", "route", "replace", "default", "via", topo.ext.ip6, "dev", UPLINK)

        # Like an upstream router: Service and LoadBalancer ranges go to the first node.
        gateway = topo.nodes[0]
        routes = [(cidr, gateway) for cidr in (*topo.service_cidrs, *topo.loadbalancer_cidrs)]
        for node in topo.nodes:
            routes += [(ip, node) for ip in node.extra_ips if not self._in_link(ip)]
            if topo.ext_router:
                routes += [(node.pod_cidr4, node), (node.pod_cidr6, node)]
        for cidr, via in routes:
            if ":" in cidr:
                self._ip(ext, "-6", "route", "replace", cidr, "via", via.ip6)
            else:
                self._ip(ext, "route", "replace", cidr, "via", via.ip4)

        for pod in topo.pods:
            self._build_pod(pod)

    def _build_pod(self, pod: Pod) -> None:
        node = self.topology.node(pod.node)
        node_ns, pod_ns = self.ns(node), self.ns(pod)
        self._add_netns(pod_ns, COMMON_SYSCTLS)
        veth = pod_veth(pod)
        if not self._has_link(node_ns, veth):
            self._ip(
                node_ns,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                POD_IF,
                "netns",
                pod_ns,
            )
        # Scope link: never picked as a source (masquerade uses the node's address).
        self._ip(node_ns, "addr", "replace", f"{POD_GW4}/32", "dev", veth, "scope", "link")
        self._ip(node_ns, "-6", "addr", "replace", f"{POD_GW6}/64", "dev", veth, "nodad")
        self._ip(node_ns, "link", "set", veth, "up")
        self._ip(pod_ns, "addr", "replace", f"{pod.ip4}/32", "dev", POD_IF)
        if pod.ip6 is not None:
            self._ip(pod_ns, "-6", "addr", "replace", f"{pod.ip6}/128", "dev", POD_IF, "nodad")
        self._ip(pod_ns, "link", "set", POD_IF, "up")
        self._ip(pod_ns, "route", "replace", POD_GW4, "dev", POD_IF, "scope", "link")
        self._ip(pod_ns, "route", "replace", "default", "via", POD_GW4, "dev", POD_IF)
        if pod.ip6 is not None:
            self._ip(pod_ns, "-6", "route", "replace", "default", "via", POD_GW6, "dev", POD_IF)
        # The node talks to its pods from its own address, as on a real node.
        self._ip(node_ns, "route", "replace", f"{pod.ip4}/32", "dev", veth, "src", node.ip4)
        if pod.ip6 is not None:
            self._ip(
                node_ns, "-6", "route", "replace", f"{pod.ip6}/128", "dev", veth, "src", node.ip6
            )

    def add_pod(self, node: str | Pod, name: str | None = None, *, ipv6: bool = True) -> Pod:
        """Add a pod to a running lab: a `Pod`, or a new one on node `node` with the next
        free name and addresses (see `Topology.new_pod`)."""
        self._check_alive()
        pod = node if isinstance(node, Pod) else self.topology.new_pod(node, name, ipv6=ipv6)
        self.topology = self.topology.with_pod(pod)
        self._build_pod(pod)
        return pod

    def remove_pod(self, name: str) -> None:
        """Stop the lab's processes in the pod and delete its namespace (and veth)."""
        self._check_alive()
        pod = self.topology.pod(name)
        ns = self.ns(pod)
        self.stop([s for s in self._started if s.ns == ns])
        self._delete_netns(ns)
        self.topology = self.topology.without_pod(name)
        # The kernel dismantles a deleted namespace asynchronously; wait until the node's
        # end of the veth is gone so that a pod of the same name can be added at once.
        node_ns, veth = self.ns(pod.node), pod_veth(pod)
        deadline = time.monotonic() + 5.0
        while self._has_link(node_ns, veth):
            if time.monotonic() > deadline:
                raise LabError(f"{veth} in {node_ns} outlived pod {name}'s namespace")
            time.sleep(0.02)

    # -- servers and clients ------------------------------------------------------------

    def start_echo(
        self,
        who: Who,
        *,
        tcp: Sequence[int] = (8080,),
        udp: Sequence[int] = (8080,),
        echo_tcp: Sequence[int] = (),
        name: str | None = None,
        max_seconds: float = 600.0,
        ready_timeout: float = 10.0,
        show_port: bool = False,
    ) -> Started:
        """Start `nftproxy.lab.echo` (answering with `name`, default the pod's name, and
        with `show_port` ":PORT" after it) and wait until it listens."""
        label = name or (who if isinstance(who, str) else who.name)
        argv = [sys.executable, "-m", "nftproxy.lab.echo", "--name", label]
        for flag, ports in (("--tcp", tcp), ("--udp", udp), ("--echo-tcp", echo_tcp)):
            if ports:
                argv += [flag, ",".join(str(p) for p in ports)]
        if show_port:
            argv.append("--show-port")
        argv += ["--max-seconds", str(max_seconds)]
        started = self.spawn(who, argv, log_name=f"echo-{label}")
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if b"ready" in started.log.read_bytes().splitlines():
                return started
            if started.proc.poll() is not None:
                break
            time.sleep(0.02)
        text = started.log.read_text(errors="replace").strip()
        self.stop(started)
        raise LabError(f"echo server in {started.ns} did not start: {text or '(no output)'}")

    def start_echo_all(
        self,
        *,
        tcp: Sequence[int] = (8080,),
        udp: Sequence[int] = (8080,),
        echo_tcp: Sequence[int] = (),
        max_seconds: float = 600.0,
    ) -> dict[str, Started]:
        """`start_echo` in every pod, each answering with its pod's name."""
        return {
            pod.name: self.start_echo(
                pod, tcp=tcp, udp=udp, echo_tcp=echo_tcp, max_seconds=max_seconds
            )
            for pod in self.topology.pods
        }

    def connect(
        self,
        who: Who,
        host: str,
        port: int,
        proto: Literal["tcp", "udp"] = "tcp",
        count: int = 1,
        *,
        timeout: float = 1.0,
        source: str | None = None,
        interval: float = 0.0,
        in_process: bool = False,
    ) -> Result:
        """Run `nftproxy.lab.client` in a namespace: `count` fresh connections to
        host:port. `in_process` runs the same code in a thread that entered the namespace
        (no interpreter start-up; identical on the wire)."""
        self._check_alive()
        if in_process:
            from nftproxy.lab import client

            return run_in_netns(
                self.ns_path(who),
                lambda: client.run(
                    host,
                    port,
                    proto,
                    count,
                    timeout=timeout,
                    source=source,
                    interval=interval,
                ),
            )
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        argv = [sys.executable, "-m", "nftproxy.lab.client", "--to", target, "--proto", proto]
        argv += ["--count", str(count), "--timeout", str(timeout), "--json"]
        argv += ["--interval", str(interval)]
        if source is not None:
            argv += ["--source", source]
        budget = count * (timeout * 2 + interval) + 30.0
        proc = self.exec(who, argv, timeout=budget)
        return Result.from_json(proc.stdout)

    def socket(
        self,
        who: Who,
        family: socket.AddressFamily = socket.AF_INET,
        kind: socket.SocketKind = socket.SOCK_STREAM,
    ) -> socket.socket:
        """A socket of this process that lives in a lab namespace (the caller closes it)."""
        self._check_alive()
        return run_in_netns(self.ns_path(who), lambda: socket.socket(family, kind))

    def open_session(
        self, who: Who, host: str, port: int, *, timeout: float = 2.0, source: str | None = None
    ) -> EchoSession:
        """A held connection from a lab namespace to an echo server's `--echo-tcp` port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = self.socket(who, family, socket.SOCK_STREAM)
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.settimeout(timeout)
            sock.connect((host, port))
            return EchoSession(sock, timeout)
        except BaseException:
            sock.close()
            raise

    # -- teardown -------------------------------------------------------------------------

    def _delete_netns(self, ns: str) -> None:
        if (NETNS_DIR / ns).exists():
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            if pids:
                log.warning(
                    "namespace %s still has processes the lab did not start (%s); it lives on "
                    "unnamed until they exit",
                    ns,
                    ", ".join(pids),
                )
            self._run(["ip", "netns", "del", ns], what="delete namespace")
        self._owned.remove(ns)

    def destroy(self) -> None:
        """Stop the lab's processes and delete its namespaces; idempotent."""
        with _cleaning():
            self.destroyed = True
            errors: list[str] = []
            try:
                stop_processes(s.proc for s in self._started)
                self._started.clear()
            except Exception as exc:
                errors.append(f"stopping processes: {exc}")
            for ns in reversed(list(self._owned)):
                try:
                    self._delete_netns(ns)
                except Exception as exc:
                    errors.append(str(exc))
            if not self.keep_logs:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if not errors:
                _unregister(self)
        if errors:
            raise LabError(f"tearing down lab {self.prefix}: " + "; ".join(errors))
