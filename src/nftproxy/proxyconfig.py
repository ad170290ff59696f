"""kube-proxy's ``KubeProxyConfiguration`` file (``--config``, v1alpha1), read into
`ProxyOptions`. Every field of that version is known with its type: those nftproxy applies
are mapped, the others that ask for something (and unknown ones) become warnings, and a
value that cannot be used is a `ProxyConfigError`. Which field does what: docs/daemon.md."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nftproxy import addresses
from nftproxy.config import (
    BindAddressError,
    ConfigError,
    parse_networks,
    parse_nodeport_addresses,
    split_host_port,
)

__all__ = [
    "ANY",
    "API_VERSION",
    "BOOL",
    "BOOLMAP",
    "DEFAULT_SYNC_PERIOD",
    "DURATION",
    "INT",
    "KIND",
    "NUMBER",
    "SCHEMA",
    "STR",
    "STRLIST",
    "UNSUPPORTED",
    "Check",
    "ProxyConfigError",
    "ProxyOptions",
    "Schema",
    "from_dict",
    "load",
    "parse",
    "parse_duration",
]

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
DEFAULT_SYNC_PERIOD = 30.0


class ProxyConfigError(ConfigError):
    """The file cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """What a config file asks for. None means "not set": the CLI's default applies, and an
    explicit flag always wins (`with_flags`)."""

    hostname_override: str | None = None
    node_ips: tuple[str, ...] | None = None
    healthz_bind_address: str | None = None
    metrics_bind_address: str | None = None
    bind_address_hard_fail: bool | None = None
    cluster_cidrs: tuple[str, ...] | None = None
    nodeport_addresses: tuple[str, ...] | None = None
    service_cidrs: tuple[str, ...] | None = None
    masquerade_all: bool | None = None
    masquerade_bit: int | None = None
    sync_period: float | None = None
    min_sync_period: float | None = None
    kubeconfig: str | None = None
    verbosity: int | None = None
    # conntrack: seconds (0 leaves the kernel's value), as in ConntrackSettings
    conntrack_tcp_established: int | None = None
    conntrack_tcp_close_wait: int | None = None
    conntrack_tcp_be_liberal: bool | None = None
    conntrack_udp: int | None = None
    conntrack_udp_stream: int | None = None
    warnings: tuple[str, ...] = ()

    def with_flags(self, **flags: Any) -> ProxyOptions:
        """These options with each flag that is not None put over them (flags win)."""
        return dataclasses.replace(self, **{k: v for k, v in flags.items() if v is not None})

    @property
    def health_timeout(self) -> float:
        """kube-proxy's healthz timeout: twice the sync period."""
        return 2 * (self.sync_period if self.sync_period is not None else DEFAULT_SYNC_PERIOD)


# --- value types ----------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(field: str, value: object) -> float:
    """A Go duration string ("1s", "500ms", "1m0s", "1h2m3.5s") in seconds; >= 0."""
    if not isinstance(value, str):
        raise ProxyConfigError(
            f'{field}: expected a duration string like "30s", got {_type(value)}'
        )
    text = value.strip()
    if text in ("0", "+0"):
        return 0.0
    body = text.lstrip("+")
    if body.startswith("-"):
        raise ProxyConfigError(f"{field}: {value!r} is negative")
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ProxyConfigError(
            f'{field}: {value!r} is not a duration (like "30s", "500ms", "1m0s")'
        )
    return total


def _type(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


Check = Callable[[str, object], None]


def _is(kinds: tuple[type, ...], what: str) -> Check:
    def check(path: str, value: object) -> None:
        # bool is an int in Python, never in the Go types.
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not ok:
            raise ProxyConfigError(f"{path}: expected {what}, got {_type(value)}")

    return check


STR = _is((str,), "a string")
BOOL = _is((bool,), "a boolean")
INT = _is((int,), "an integer")
NUMBER = _is((int, float), "a number")


def DURATION(path: str, value: object) -> None:
    parse_duration(path, value)


def STRLIST(path: str, value: object) -> None:
    if not isinstance(value, list):
        raise ProxyConfigError(f"{path}: expected a list of strings, got {_type(value)}")
    for i, item in enumerate(value):
        STR(f"{path}[{i}]", item)


def BOOLMAP(path: str, value: object) -> None:
    if not isinstance(value, dict):
        raise ProxyConfigError(f"{path}: expected a mapping, got {_type(value)}")
    for k, v in value.items():
        BOOL(f"{path}.{k}", v)


def ANY(path: str, value: object) -> None:
    pass


Schema = Mapping[str, "Check | Schema"]

# Every field of kubeproxy.config.k8s.io/v1alpha1 (Kubernetes 1.29-1.33).
SCHEMA: Schema = {
    "apiVersion": STR,
    "kind": STR,
    "featureGates": BOOLMAP,
    "clientConnection": {
        "kubeconfig": STR,
        "acceptContentTypes": STR,
        "contentType": STR,
        "qps": NUMBER,
        "burst": INT,
    },
    "logging": {
        "format": STR,
        "flushFrequency": ANY,  # a duration string or nanoseconds
        "verbosity": INT,
        "vmodule": ANY,
        "options": ANY,
    },
    "hostnameOverride": STR,
    # nftproxy's own field (kube-proxy has none): ranges whose unallocated addresses are
    # dropped, beside those of ServiceCIDR objects.
    "serviceCIDRs": STRLIST,
    "bindAddress": STR,
    "healthzBindAddress": STR,
    "metricsBindAddress": STR,
    "bindAddressHardFail": BOOL,
    "enableProfiling": BOOL,
    "showHiddenMetricsForVersion": STR,
    "mode": STR,
    "iptables": {
        "masqueradeAll": BOOL,
        "masqueradeBit": INT,
        "localhostNodePorts": BOOL,
        "syncPeriod": DURATION,
        "minSyncPeriod": DURATION,
    },
    "ipvs": {
        "syncPeriod": DURATION,
        "minSyncPeriod": DURATION,
        "scheduler": STR,
        "excludeCIDRs": STRLIST,
        "strictARP": BOOL,
        "tcpTimeout": DURATION,
        "tcpFinTimeout": DURATION,
        "udpTimeout": DURATION,
    },
    "nftables": {
        "masqueradeAll": BOOL,
        "masqueradeBit": INT,
        "syncPeriod": DURATION,
        "minSyncPeriod": DURATION,
    },
    "winkernel": {
        "networkName": STR,
        "sourceVip": STR,
        "enableDSR": BOOL,
        "rootHnsEndpointName": STR,
        "forwardHealthCheckVip": BOOL,
    },
    "detectLocalMode": STR,
    "detectLocal": {"bridgeInterface": STR, "interfaceNamePrefix": STR},
    "clusterCIDR": STR,
    "nodePortAddresses": STRLIST,
    "oomScoreAdj": INT,
    "conntrack": {
        "maxPerCore": INT,
        "min": INT,
        "tcpEstablishedTimeout": DURATION,
        "tcpCloseWaitTimeout": DURATION,
        "tcpBeLiberal": BOOL,
        "udpTimeout": DURATION,
        "udpStreamTimeout": DURATION,
    },
    "configSyncPeriod": DURATION,
    "portRange": STR,
    "windowsRunAsService": BOOL,
}

# Why a known field is not applied, by path; a section's reason covers its fields.
UNSUPPORTED = {
    "featureGates": "feature gates are not supported; ignored",
    "clientConnection": "not supported (only clientConnection.kubeconfig is used); ignored",
    "logging": "not supported (only logging.verbosity and format text are used); ignored",
    "enableProfiling": "profiling is not supported; ignored",
    "showHiddenMetricsForVersion": "there are no hidden metrics; ignored",
    "iptables": "used only in iptables mode (nftproxy reads the nftables section); ignored",
    "iptables.localhostNodePorts": "nftables mode never accepts NodePorts on localhost; ignored",
    "ipvs": "used only in ipvs mode; ignored",
    "winkernel": "used only on Windows; ignored",
    "windowsRunAsService": "used only on Windows; ignored",
    "detectLocal": "only detectLocalMode ClusterCIDR is supported; ignored",
    "oomScoreAdj": "not supported (set it on the container); ignored",
    "conntrack.maxPerCore": "nf_conntrack_max is machine-wide: a node sysctl; ignored",
    "conntrack.min": "nf_conntrack_max is machine-wide: a node sysctl; ignored",
    "configSyncPeriod": "informer resync is not used; ignored",
    "portRange": "not supported; ignored",
}


def _unset(value: object) -> bool:
    if isinstance(value, dict):
        return all(_unset(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value is None or value in ("", "0", "0s", False, 0)


def _reason(path: str) -> str:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        reason = UNSUPPORTED.get(".".join(parts[:i]))
        if reason is not None:
            return reason
    return "not supported; ignored"


class _Reader:
    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.used: set[str] = set()
        self.warnings: list[str] = []

    def get(self, path: str) -> Any:
        """The value at a dotted path (None when absent or null), marked as applied."""
        self.used.add(path)
        node: Any = self.doc
        for part in path.split("."):
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return node

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(f"{path}: {reason}")

    def check(
        self, node: Mapping[str, Any], schema: Schema, prefix: str = "", *, report: bool = True
    ) -> None:
        """Types of every known field; with `report`, unknown fields and set fields that
        were not applied become warnings."""
        for key, value in node.items():
            path = f"{prefix}{key}"
            spec = schema.get(str(key))
            if spec is None:
                if report:
                    self.warn(path, "unknown field; ignored")
                continue
            if value is None:
                continue
            if isinstance(spec, Mapping):
                if not isinstance(value, dict):
                    raise ProxyConfigError(f"{path}: expected a mapping, got {_type(value)}")
                self.check(value, spec, f"{path}.", report=report)
                continue
            spec(path, value)
            if report and path not in self.used and not _unset(value):
                if isinstance(value, dict):  # free-form maps: one warning per entry
                    for k, v in value.items():
                        if not _unset(v):
                            self.warn(f"{path}.{k}", _reason(path))
                else:
                    self.warn(path, _reason(path))


def _bind(path: str, value: str, default_port: int) -> str | None:
    if not value.strip():
        return None
    try:
        host, port = split_host_port(path, value, default_port)
    except BindAddressError as exc:
        raise ProxyConfigError(str(exc)) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def from_dict(doc: object) -> ProxyOptions:
    """Options from one decoded KubeProxyConfiguration document."""
    if not isinstance(doc, dict):
        raise ProxyConfigError(f"expected a {KIND} mapping, got {_type(doc)}")
    if doc.get("kind") != KIND:
        raise ProxyConfigError(f"kind: expected {KIND!r}, got {doc.get('kind')!r}")
    if doc.get("apiVersion") != API_VERSION:
        raise ProxyConfigError(
            f"apiVersion: expected {API_VERSION!r}, got {doc.get('apiVersion')!r}"
        )
    r = _Reader(doc)
    # Types first, so the mapping below sees only well-typed values.
    r.check(doc, SCHEMA, report=False)

    r.get("apiVersion")
    r.get("kind")
    out: dict[str, Any] = {}

    if (v := r.get("hostnameOverride")) and v.strip():
        out["hostname_override"] = v.strip().lower()
    if (v := r.get("bindAddress")) and v.strip():
        try:
            addr = addresses.ip_address(v.strip())  # leading zeros too, as kube-proxy
        except ValueError:
            raise ProxyConfigError(f"bindAddress: {v!r} is not an IP address") from None
        if not addr.is_unspecified:
            out["node_ips"] = (str(addr),)
    if (v := r.get("healthzBindAddress")) is not None:
        out["healthz_bind_address"] = _bind("healthzBindAddress", v, 10256)
    if (v := r.get("metricsBindAddress")) is not None:
        out["metrics_bind_address"] = _bind("metricsBindAddress", v, 10249)
    if (v := r.get("bindAddressHardFail")) is not None:
        out["bind_address_hard_fail"] = v

    mode = r.get("mode")
    if mode and mode.strip().lower() != "nftables":
        r.warn("mode", f"{mode!r} is not supported: nftproxy always programs nftables")

    masq_nft, masq_ipt = r.get("nftables.masqueradeAll"), r.get("iptables.masqueradeAll")
    if masq_nft is not None or masq_ipt is not None:
        out["masquerade_all"] = bool(masq_nft) or bool(masq_ipt)
    if (v := r.get("nftables.masqueradeBit")) is not None:
        if not 0 <= v <= 31:
            raise ProxyConfigError(f"nftables.masqueradeBit: {v} is not in 0..31")
        out["masquerade_bit"] = v
    if (v := r.get("nftables.syncPeriod")) is not None:
        out["sync_period"] = parse_duration("nftables.syncPeriod", v) or None
    if (v := r.get("nftables.minSyncPeriod")) is not None:
        out["min_sync_period"] = parse_duration("nftables.minSyncPeriod", v)

    for field, key in (
        ("tcpEstablishedTimeout", "conntrack_tcp_established"),
        ("tcpCloseWaitTimeout", "conntrack_tcp_close_wait"),
        ("udpTimeout", "conntrack_udp"),
        ("udpStreamTimeout", "conntrack_udp_stream"),
    ):
        if (v := r.get(f"conntrack.{field}")) is not None:
            out[key] = round(parse_duration(f"conntrack.{field}", v))
    if (v := r.get("conntrack.tcpBeLiberal")) is not None:
        out["conntrack_tcp_be_liberal"] = v

    local_mode = r.get("detectLocalMode")
    if local_mode and local_mode != "ClusterCIDR":
        r.warn(
            "detectLocalMode",
            f"{local_mode!r} is not supported: only ClusterCIDR (clusterCIDR) is",
        )
    if (v := r.get("clusterCIDR")) and v.strip():
        try:
            out["cluster_cidrs"] = parse_networks("clusterCIDR", [v])
        except ConfigError as exc:
            raise ProxyConfigError(str(exc)) from None
    if v := r.get("nodePortAddresses"):
        try:
            out["nodeport_addresses"] = parse_nodeport_addresses("nodePortAddresses", v)
        except ConfigError as exc:
            raise ProxyConfigError(str(exc)) from None

    if v := r.get("serviceCIDRs"):
        try:
            out["service_cidrs"] = parse_networks("serviceCIDRs", v)
        except ConfigError as exc:
            raise ProxyConfigError(str(exc)) from None

    if (v := r.get("clientConnection.kubeconfig")) and v.strip():
        out["kubeconfig"] = v.strip()
    if (v := r.get("logging.verbosity")) is not None:
        out["verbosity"] = v
    fmt = r.get("logging.format")
    if fmt and fmt != "text":
        r.warn("logging.format", f"{fmt!r} is not supported (text only); ignored")

    r.check(doc, SCHEMA)
    return ProxyOptions(
        **{k: v for k, v in out.items() if v is not None}, warnings=tuple(r.warnings)
    )


def parse(text: str, source: str = "config") -> ProxyOptions:
    """Options from the text of a config file (one YAML or JSON document)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ProxyConfigError(f"{source}: not YAML: {exc}") from None
    if len(docs) != 1:
        raise ProxyConfigError(f"{source}: expected one {KIND} document, found {len(docs)}")
    try:
        return from_dict(docs[0])
    except ProxyConfigError as exc:
        raise ProxyConfigError(f"{source}: {exc}") from None


def load(path: str | Path) -> ProxyOptions:
    """Options from a ``--config`` file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ProxyConfigError(f"{path}: {exc.strerror or exc}") from None
    return parse(text, str(path))
