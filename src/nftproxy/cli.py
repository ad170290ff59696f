"""Command line: arguments in, calls out. compile, plan, apply, explain and cleanup are here;
`run`, `demo` and `cluster` hand over to daemon, demo and lab.cluster. The exit statuses
are the EXIT_* constants (2 is argparse's usage error); what each means: README, "Commands"."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import ipaddress
import json
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Sequence
from typing import Any

from nftproxy import __version__, addresses, applying, explain, logs
from nftproxy.config import PRIMARY, ConfigError, NodeConfig, node_config, service_cidr_union
from nftproxy.conntrack import ConntrackSettings
from nftproxy.dashboard import command as dashboard_command
from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.errors import NftError
from nftproxy.lab import dashboard_demo
from nftproxy.lab.cluster import command as cluster_command
from nftproxy.proxier import DEFAULT_VERIFY_PERIOD
from nftproxy.proxyconfig import ProxyOptions
from nftproxy.ruleset.compile import Names, compile_all
from nftproxy.ruleset.desired import DesiredState, Ruleset, bulk_build
from nftproxy.sources.manifests import DEFAULT_LIMITS, Manifests, ReadLimits, load_paths

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "InputError",
    "build_ruleset",
    "cmd_apply",
    "cmd_cleanup",
    "cmd_compile",
    "cmd_demo",
    "cmd_explain",
    "cmd_plan",
    "cmd_run",
    "conntrack_settings",
    "main",
    "normalized",
    "parser",
    "with_service_cidrs",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PARTIAL = 3
# What a shell reports for a program killed by SIGPIPE (128 + 13), as `cat` or kubectl are
# when the reader of their output goes away: see main.
EXIT_BROKEN_PIPE = 141


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text} is not more than 0")
    if value == math.inf:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _level(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level (0, 1, 2, ...)")
    return int(text)


def _verbosity(args: argparse.Namespace, config: int | None = None) -> int:
    """--v (else the config file's logging.verbosity, else 0), plus 2 for each -v."""
    base = args.v if args.v is not None else (config or 0)
    return int(base) + 2 * int(args.verbose)


def _verbosity_options(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    # On the top parser and each subcommand, so both `nftproxy --v=2 run` and kube-proxy's
    # habit `nftproxy run --v=2` work; a subcommand's default must not undo the top one's.
    g = p.add_argument_group("logging")
    g.add_argument(
        "--v",
        type=_level,
        metavar="N",
        default=None if top else argparse.SUPPRESS,
        help=logs.HELP,
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="more verbose: each -v adds 2 to --v (-v also lists skipped objects); "
        "-v=N and -v N are --v=N",
    )
    if not top:
        # kube-proxy is one command with --version: `nftproxy run --version` answers too.
        p.add_argument(
            "--version",
            action="version",
            version=f"nftproxy {_version()}",
            help="print the version",
        )


def _node_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("node")
    g.add_argument("--node-name", "--hostname-override", default="", help="this node's name")
    g.add_argument("--zone", default="", help="this node's topology zone (for hints)")
    g.add_argument(
        "--node-ip",
        action="append",
        default=[],
        help="this node's address(es), repeatable; compile, plan, apply and explain take "
        "them as its own addresses (for --nodeport-addresses), `run` adds them to those of "
        "its network namespace's interfaces",
    )
    g.add_argument(
        "--cluster-cidr",
        action="append",
        default=[],
        help="pod network CIDR(s); ClusterIP traffic from outside is masqueraded",
    )
    g.add_argument(
        "--nodeport-addresses",
        action="append",
        default=[],
        help="CIDRs (or 'primary': the node's first IP of each family) selecting which of "
        "this node's own addresses accept NodePorts; never loopback, never an address "
        "routed through the node (default, as in kube-proxy's nftables mode: 'primary'; "
        "every local address when the node's IPs are not known; '0.0.0.0/0,::/0': every "
        "local address)",
    )
    g.add_argument(
        "--service-cidr",
        action="append",
        default=[],
        help="Service ClusterIP range(s), repeatable: an address in them that no Service "
        "holds is dropped (added to the ranges of ServiceCIDR objects)",
    )
    g.add_argument(
        "--masquerade-all",
        action="store_true",
        help="SNAT all traffic to ClusterIPs (Services with externalTrafficPolicy Local keep "
        "the client address from outside, as in kube-proxy)",
    )
    g.add_argument("--masquerade-bit", type=int, default=None, help="packet mark bit (default 14)")
    g.add_argument(
        "--service-proxy-name",
        default=None,
        help="handle Services labelled service.kubernetes.io/service-proxy-name=NAME",
    )


def _node(args: argparse.Namespace, opts: ProxyOptions | None = None) -> NodeConfig:
    """Node options: explicit flags, then a --config file (the daemon's), then defaults."""
    opts = opts or ProxyOptions()
    name = args.node_name or opts.hostname_override or ""
    if not name and getattr(args, "manifests", None) == []:
        # The daemon on the API, like kube-proxy, is named after the host by default.
        name = socket.gethostname()
    bit = args.masquerade_bit if args.masquerade_bit is not None else opts.masquerade_bit
    return node_config(
        node_name=name,
        zone=args.zone,
        node_ips=args.node_ip or list(opts.node_ips or ()),
        cluster_cidrs=args.cluster_cidr or list(opts.cluster_cidrs or ()),
        # kube-proxy's nftables mode defaults to the node's primary IPs.
        nodeport_addresses=args.nodeport_addresses or list(opts.nodeport_addresses or [PRIMARY]),
        service_cidrs=args.service_cidr or list(opts.service_cidrs or ()),
        masquerade_all=args.masquerade_all or bool(opts.masquerade_all),
        masquerade_bit=14 if bit is None else bit,
        service_proxy_name=args.service_proxy_name,
    )


def _offline_node(args: argparse.Namespace) -> NodeConfig:
    """The node of compile, plan, apply and explain: its own addresses are the --node-ip
    ones, so say when --nodeport-addresses selects none of them."""
    node = _node(args)
    for warning in node.nodeport_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return node


def _size(text: str) -> int:
    """A size in bytes: a whole number, optionally with K, M or G (powers of 1024)."""
    units = {"": 0, "K": 10, "KI": 10, "M": 20, "MI": 20, "G": 30, "GI": 30}
    number = text.strip().upper().removesuffix("B")
    unit = number.lstrip("0123456789")
    digits = number[: len(number) - len(unit)]
    if not digits or unit not in units or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 64K, 1G)")
    return int(digits) << units[unit]


def _limits(args: argparse.Namespace) -> ReadLimits:
    return ReadLimits(max_file_bytes=args.max_file_size, max_document_chars=args.max_document_size)


def _limit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input limits")
    g.add_argument(
        "--max-file-size",
        type=_size,
        default=DEFAULT_LIMITS.max_file_bytes,
        metavar="SIZE",
        help="largest manifest file read (default 512M); a larger one is an error",
    )
    g.add_argument(
        "--max-document-size",
        type=_size,
        default=DEFAULT_LIMITS.max_document_chars,
        metavar="SIZE",
        help="largest YAML document or JSON file, aliases expanded (default 512M): bounds "
        "the memory one document takes while it is read",
    )


class InputError(Exception):
    """The inputs cannot be trusted to describe the cluster: nothing is compiled or
    applied (a path that does not exist, a file that cannot be read or parsed, nothing
    at all to read)."""


def _load(args: argparse.Namespace, node: NodeConfig) -> Manifests:
    manifests = load_paths(
        args.paths, service_proxy_name=node.service_proxy_name, limits=_limits(args)
    )
    for err in manifests.errors:
        print(f"error: {err}", file=sys.stderr)
    for warning in manifests.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if _verbosity(args) >= 2:
        for what, why in manifests.skipped:
            print(f"skipped: {what}: {why}", file=sys.stderr)
        for kind, n in sorted(manifests.ignored.items()):
            print(f"ignored: {n} {kind} object(s)", file=sys.stderr)
    # plan and apply (which know --prune) reassure that the table is untouched.
    done = "nothing was changed" if hasattr(args, "prune") else "nothing was compiled"
    unreadable = [err for err in manifests.errors if err.kind == "file"]
    if unreadable:
        where = ", ".join(sorted({err.source or "?" for err in unreadable}))
        raise InputError(f"cannot read {where}: {done}")
    # ServiceCIDRs alone describe no Service: applying them would delete every one.
    described = manifests.services or manifests.slices or manifests.skipped or manifests.errors
    if not described and not getattr(args, "prune", False):
        prune = " (--prune applies an empty input)" if hasattr(args, "prune") else ""
        raise InputError(f"no Services or EndpointSlices in {', '.join(args.paths)}: {done}{prune}")
    return manifests


def with_service_cidrs(
    node: NodeConfig, flagged: Sequence[str], objects: Sequence[str]
) -> NodeConfig:
    cidrs = service_cidr_union(flagged, objects)
    return node if cidrs == node.service_cidrs else dataclasses.replace(node, service_cidrs=cidrs)


def _cidrs_of(manifests: Manifests) -> tuple[str, ...]:
    return tuple(c for obj in manifests.service_cidrs.values() for c in obj.cidrs)


def build_ruleset(
    manifests: Manifests, node: NodeConfig, names: Names, *, keep: bool = False
) -> Ruleset:
    """The ruleset of the valid objects. With `keep`, Services one of whose slices was
    rejected are left out, so that what the table holds for them stays (see applying.keeping)
    rather than being rebuilt without those endpoints."""
    desired = DesiredState(node, names, track_changes=False)
    services = manifests.services
    if keep and manifests.incomplete:
        unsure = set(manifests.incomplete.values())
        services = {sid: s for sid, s in services.items() if sid not in unsure}
    with bulk_build():
        frags = compile_all(services, manifests.slices.values(), node, names)
        for sid, frag in frags.items():
            desired.set_service(sid, frag)
    for warning in desired.conflict_warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return desired.ruleset


def _status(manifests: Manifests) -> int:
    return EXIT_PARTIAL if manifests.errors else EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    node = _offline_node(args)
    manifests = _load(args, node)
    node = with_service_cidrs(node, node.service_cidrs, _cidrs_of(manifests))
    plan = applying.generation_plan(
        lambda names: build_ruleset(manifests, node, names), None, 1, "full ruleset"
    )
    for tx in plan.transactions:
        _emit(str(tx))
    return _status(manifests)


def _plan(args: argparse.Namespace) -> tuple[applying.Plan, Manifests, Any]:
    node = _offline_node(args)
    manifests = _load(args, node)
    node = with_service_cidrs(node, node.service_cidrs, _cidrs_of(manifests))
    backend = open_backend(args.netns, prefer=args.backend)
    keep = bool(manifests.errors) and not args.prune
    try:
        plan = applying.make_plan(
            lambda names: build_ruleset(manifests, node, names, keep=keep),
            applying.read_applied(backend),
            chunk=args.chunk,
            force_generation=getattr(args, "full", False),
            keep=keep,
        )
    except applying.KeepRefused as exc:
        raise InputError(f"{exc}; fix the invalid objects, or use --prune") from None
    if plan.kept:
        print(
            f"kept {plan.kept} element(s), chain(s) and set(s) of the table that the valid "
            "objects do not describe, because some objects are invalid: fix them, or use "
            "--prune to delete what they held",
            file=sys.stderr,
        )
    return plan, manifests, backend


def _emit(text: str, piece: int = 1 << 16) -> None:
    """Standard output in pieces: when the reader goes away (`| head`) during one large
    write, the write returns what went through without an error, and the rest would be
    lost silently; the next piece's write then says so (BrokenPipeError, see main)."""
    for start in range(0, len(text), piece):
        sys.stdout.write(text[start : start + piece])
        sys.stdout.flush()


def cmd_plan(args: argparse.Namespace) -> int:
    plan, manifests, _ = _plan(args)
    _emit(str(plan))
    return _status(manifests)


def cmd_apply(args: argparse.Namespace) -> int:
    plan, manifests, backend = _plan(args)
    result = applying.run_plan(backend, plan)
    done = applying.describe(result.mode, result.generation, result.changes, plan.reason)
    if result.transactions:
        done += f" in {result.transactions} transaction(s), {result.seconds * 1000:.1f} ms"
    print(done, file=sys.stderr)
    return _status(manifests)


def cmd_cleanup(args: argparse.Namespace) -> int:
    backend = open_backend(args.netns, prefer=args.backend)
    removed = applying.cleanup(backend)
    print("removed table inet nftproxy" if removed else "nothing to remove", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from nftproxy import daemon, proxyconfig

    log = logging.getLogger("nftproxy")
    if args.cleanup:
        return cmd_cleanup(args)
    opts = proxyconfig.load(args.config) if args.config else proxyconfig.ProxyOptions()
    if args.v is None and opts.verbosity is not None:
        logs.setup(_verbosity(args, opts.verbosity), timestamps=True)
    for warning in opts.warnings:
        log.warning("%s: %s", args.config, warning)
    opts = _with_kube_proxy_flags(args, opts, log)
    if args.manifests == ["-"]:
        raise ConfigError("--manifests: standard input cannot be watched; give a path")
    min_sync = args.min_sync_period
    if min_sync is None:
        min_sync = opts.min_sync_period if opts.min_sync_period is not None else 1.0
    options = daemon.DaemonOptions(
        node=_node(args, opts),
        netns=args.netns,
        backend=args.backend,
        min_sync_period=min_sync,
        sync_burst=args.sync_burst,
        verify_period=args.verify_period,
        health_timeout=opts.health_timeout,
        healthz_bind_address=_choose(
            args.healthz_bind_address, opts.healthz_bind_address, "0.0.0.0:10256"
        ),
        metrics_bind_address=_choose(
            args.metrics_bind_address, opts.metrics_bind_address, "127.0.0.1:10249"
        ),
        bind_address_hard_fail=args.bind_address_hard_fail or bool(opts.bind_address_hard_fail),
        conntrack=conntrack_settings(args, opts),
        manifests=tuple(args.manifests or ()),
        poll_interval=args.poll_interval,
        limits=_limits(args),
        kubeconfig=args.kubeconfig or opts.kubeconfig,
        fixed_zone=bool(args.zone),
        fixed_node_ips=bool(args.node_ip),
    )
    try:
        daemon.run(options)
    except daemon.MissingInputs as exc:
        raise InputError(str(exc)) from None
    return EXIT_OK


def _with_kube_proxy_flags(
    args: argparse.Namespace, opts: ProxyOptions, log: logging.Logger
) -> ProxyOptions:
    """kube-proxy's --proxy-mode and --bind-address, read as its config file's fields are."""
    mode = (args.proxy_mode or "").strip()
    if mode and mode.lower() != "nftables":
        log.warning("--proxy-mode %s is not supported: nftproxy always programs nftables", mode)
    if args.bind_address is None or not args.bind_address.strip():
        return opts
    try:
        bound = addresses.ip_address(args.bind_address.strip())
    except ValueError:
        raise ConfigError(f"--bind-address: {args.bind_address!r} is not an IP address") from None
    if bound.is_unspecified:
        return opts
    return opts.with_flags(node_ips=(str(bound),))


def _duration_seconds(text: str) -> int:
    from nftproxy.proxyconfig import ProxyConfigError, parse_duration

    try:
        return round(parse_duration("duration", text))
    except ProxyConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("duration: ")) from None


def conntrack_settings(args: argparse.Namespace, opts: ProxyOptions) -> ConntrackSettings:
    """Flags, else the config file, else kube-proxy's defaults."""
    default = ConntrackSettings()

    def pick(flag: Any, config: Any, fallback: Any) -> Any:
        return flag if flag is not None else config if config is not None else fallback

    return ConntrackSettings(
        tcp_established=pick(
            args.conntrack_tcp_timeout_established,
            opts.conntrack_tcp_established,
            default.tcp_established,
        ),
        tcp_close_wait=pick(
            args.conntrack_tcp_timeout_close_wait,
            opts.conntrack_tcp_close_wait,
            default.tcp_close_wait,
        ),
        tcp_be_liberal=pick(
            args.conntrack_tcp_be_liberal, opts.conntrack_tcp_be_liberal, default.tcp_be_liberal
        ),
        udp=pick(args.conntrack_udp_timeout, opts.conntrack_udp, default.udp),
        udp_stream=pick(
            args.conntrack_udp_timeout_stream, opts.conntrack_udp_stream, default.udp_stream
        ),
    )


def _choose(flag: str | None, config: str | None, default: str) -> str:
    """A bind address: the flag, else the config file, else kube-proxy's default; an empty
    string turns the server off."""
    if flag is not None:
        return flag
    return config if config is not None else default


def cmd_demo(args: argparse.Namespace) -> int:
    from nftproxy import demo

    live = None if args.live == "auto" else args.live == "yes"
    try:
        return demo.run(args.duration, live=live)
    except demo.DemoUnavailable as exc:
        print(f"nftproxy demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # demo.run said what it removed
        return 130


def _parse_target(text: str) -> tuple[str, int, str]:
    """`IP:PORT/PROTO`, `[IPv6]:PORT/PROTO`; protocol defaults to tcp."""
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        proto = proto.lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ConfigError(f"--to: unknown protocol {proto!r} (tcp, udp or sctp)")
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"--to: {text!r} needs a port (IP:PORT/PROTO)")
    host = host.strip("[]")
    try:
        ip = str(addresses.ip_address(host))  # leading zeros too, as kube-proxy's flags
        port_no = int(port)
    except ValueError:
        raise ConfigError(f"--to: {text!r} is not IP:PORT") from None
    if not 1 <= port_no <= 65535:
        raise ConfigError(f"--to: port {port_no} is out of range 1-65535")
    return ip, port_no, proto


def _parse_source(text: str) -> str:
    try:
        return str(addresses.ip_address(text))
    except ValueError:
        raise ConfigError(f"--from: {text!r} is not an IP address") from None


def _default_source(args: argparse.Namespace, node: NodeConfig, dst: str) -> str:
    fam = ipaddress.ip_address(dst).version
    if args.via == "node":
        ips = [a for a in node.node_ips if ipaddress.ip_address(a).version == fam]
        return ips[0] if ips else ("127.0.0.1" if fam == 4 else "::1")
    if args.via == "clusterip":
        for cidr in node.cluster_cidrs_of(4 if fam == 4 else 6):
            net = ipaddress.ip_network(cidr)
            return str(net.network_address + 2) if net.num_addresses > 2 else str(net[0])
    return "203.0.113.10" if fam == 4 else "2001:db8::10"


def cmd_explain(args: argparse.Namespace) -> int:
    node = _offline_node(args)
    manifests = _load(args, node)
    node = with_service_cidrs(node, node.service_cidrs, _cidrs_of(manifests))
    dst, port, proto = _parse_target(args.to)
    src = _parse_source(args.source) if args.source else _default_source(args, node, dst)
    if ipaddress.ip_address(src).version != ipaddress.ip_address(dst).version:
        raise ConfigError("--from and --to must be of the same address family")
    ruleset = build_ruleset(manifests, node, Names())
    pkt = explain.Packet(src, dst, port, proto, from_node=args.via == "node")
    result = explain.explain(ruleset, node, pkt)
    if not result.branches and not node.node_ips:
        missing = _missing_node_ip(args.via, manifests, port, proto)
        if missing:
            raise ConfigError(f"--to {args.to}: {missing}")
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(result)
    return _status(manifests)


def _missing_node_ip(via: str, manifests: Manifests, port: int, proto: str) -> str | None:
    """Why an answer of "no match" means nothing, when a NodePort may be meant but no
    option says which addresses are the node's (the ruleset accepts NodePorts on the
    node's own addresses, which explain cannot find out by itself)."""
    owners = sorted(
        str(svc.id)
        for svc in manifests.services.values()
        for p in svc.ports
        if p.node_port == port and p.protocol.value == proto
    )
    if owners:
        what = f"port {port}/{proto} is the NodePort of {', '.join(owners)}"
    elif via == "nodeport":
        what = "--via nodeport"
    else:
        return None
    return f"{what}, but which addresses are this node's is unknown: give --node-ip"


def _version() -> str:
    try:
        return importlib.metadata.version("nftproxy")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return __version__


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="nftproxy", description="Kubernetes Services as nftables shared maps."
    )
    top.add_argument(
        "--version", action="version", version=f"nftproxy {_version()}", help="print the version"
    )
    _verbosity_options(top, top=True)
    sub = top.add_subparsers(dest="command", required=True)

    def with_inputs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "paths",
            nargs="+",
            metavar="FILE|DIR|-",
            help="Service/EndpointSlice manifests; - reads them from standard input",
        )
        _node_options(p)
        _limit_options(p)

    def with_kernel(p: argparse.ArgumentParser, *, netns_required: bool = True) -> None:
        p.add_argument("--netns", required=netns_required, help="target network namespace")
        p.add_argument(
            "--backend",
            choices=("auto", "lib", "binary"),
            default="auto",
            help="libnftables in-process (lib) or the nft binary",
        )

    def with_chunk(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--chunk",
            type=int,
            default=applying.CHUNK,
            help=f"elements per transaction when building a generation (default {applying.CHUNK})",
        )

    p = sub.add_parser("compile", help="print the full ruleset as nft commands")
    with_inputs(p)
    _verbosity_options(p)
    p.set_defaults(func=cmd_compile)

    def with_prune(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--prune",
            action="store_true",
            help="exactly these inputs: delete what they do not describe even when some "
            "objects are invalid (by default their rules stay), and accept an input without "
            "Services (which empties the table)",
        )

    p = sub.add_parser("plan", help="print the transaction(s) that apply would run")
    with_inputs(p)
    with_kernel(p)
    with_chunk(p)
    with_prune(p)
    p.add_argument("--full", action="store_true", help="plan a full rebuild (new generation)")
    _verbosity_options(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("apply", help="bring a network namespace to the desired ruleset")
    with_inputs(p)
    with_kernel(p)
    with_chunk(p)
    with_prune(p)
    p.add_argument("--full", action="store_true", help="rebuild as a new generation")
    _verbosity_options(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("explain", help="where does a packet go, per the compiled ruleset")
    with_inputs(p)
    p.add_argument("--to", required=True, help="destination IP:PORT/PROTO")
    p.add_argument("--from", dest="source", help="client address")
    p.add_argument(
        "--via",
        choices=("clusterip", "nodeport", "external", "node"),
        default="external",
        help="where the client is: a pod (clusterip), outside the cluster (nodeport, "
        "external) or the node itself (node); a NodePort needs --node-ip",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _verbosity_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "run", help="the daemon: keep a namespace in sync with the Kubernetes API or manifests"
    )
    p.add_argument(
        "--manifests",
        action="append",
        default=[],
        metavar="DIR",
        help="serve a watched directory (or file) of manifests instead of the Kubernetes API",
    )
    _limit_options(p)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, then in-cluster)")
    p.add_argument("--config", help="a KubeProxyConfiguration file (flags win over it)")
    _verbosity_options(p)
    with_kernel(p, netns_required=False)
    p.add_argument(
        "--min-sync-period",
        type=float,
        default=None,
        help="seconds between syncs; changes in between are batched (default 1)",
    )
    p.add_argument(
        "--sync-burst",
        type=_positive_int,
        default=2,
        help="syncs allowed back to back before --min-sync-period applies (default 2, "
        "as kube-proxy)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between directory scans (default 0.5)",
    )
    p.add_argument(
        "--verify-period",
        type=float,
        default=DEFAULT_VERIFY_PERIOD,
        help="seconds between element-by-element comparisons of the table with the desired "
        f"state (default {DEFAULT_VERIFY_PERIOD:g}; 0: never). Foreign commits are noticed "
        "within a tick anyway, by the kernel's generation id, and compared then",
    )
    p.add_argument(
        "--healthz-bind-address",
        default=None,
        help="/healthz and /livez (default 0.0.0.0:10256; empty: off)",
    )
    p.add_argument(
        "--metrics-bind-address",
        default=None,
        help="Prometheus /metrics (default 127.0.0.1:10249; empty: off)",
    )
    p.add_argument(
        "--bind-address-hard-fail",
        action="store_true",
        help="exit (status 1) when a bind address cannot be listened on; by default it is "
        "tried again every 5 s, as kube-proxy does",
    )
    kube = p.add_argument_group("kube-proxy's own flags, for a drop-in")
    kube.add_argument(
        "--proxy-mode",
        default=None,
        metavar="MODE",
        help="accepted as kube-proxy's: nftproxy always programs nftables (another mode is "
        "reported, not obeyed)",
    )
    kube.add_argument(
        "--bind-address",
        default=None,
        metavar="IP",
        help="as kube-proxy's: a specific address is this node's IP (as --node-ip); "
        "0.0.0.0 and :: mean not set",
    )
    kube.add_argument(
        "--cleanup",
        action="store_true",
        help="as kube-proxy's: delete the nftproxy table (of --netns) and exit",
    )
    for flag, what, default in (
        ("--conntrack-tcp-timeout-established", "established TCP connections", "24h0m0s"),
        ("--conntrack-tcp-timeout-close-wait", "TCP connections in CLOSE_WAIT", "1h0m0s"),
        ("--conntrack-udp-timeout", "UDP flows", "0"),
        ("--conntrack-udp-timeout-stream", "UDP streams", "0"),
    ):
        kube.add_argument(
            flag,
            type=_duration_seconds,
            metavar="DURATION",
            help=f"as kube-proxy's: conntrack timeout for {what}, set in the namespace "
            f"served (default {default}, or the config's; \"0\" leaves the kernel's)",
        )
    kube.add_argument(
        "--conntrack-tcp-be-liberal",
        action="store_true",
        default=None,
        help="as kube-proxy's: conntrack accepts TCP packets outside the window",
    )
    _node_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", help="a small cluster of network namespaces with live load balancing (root)"
    )
    p.add_argument(
        "--duration", type=_positive_float, default=45.0, help="seconds of traffic (default 45)"
    )
    p.add_argument(
        "--live",
        choices=("auto", "yes", "no"),
        default="auto",
        help="redraw one screen (default when stdout is a terminal) or print each second",
    )
    _verbosity_options(p)
    p.set_defaults(func=cmd_demo)

    cluster_command.add_parser(sub)
    dashboard_command.add_parser(sub)
    dashboard_demo.add_parser(sub)

    p = sub.add_parser("cleanup", help="remove everything nftproxy owns in a namespace")
    with_kernel(p)
    _verbosity_options(p)
    p.set_defaults(func=cmd_cleanup)
    return top


# kube-proxy's short forms of --v: -v=N, -vN and -v N. A bare -v is "more verbose".
_SHORT_LEVEL = re.compile(r"-v=?(\d+)")


def normalized(argv: Sequence[str]) -> list[str]:
    """`argv` with kube-proxy's -v=N, -vN and -v N spelt --v=N (up to a `--`)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return out + list(argv[i:])
        if m := _SHORT_LEVEL.fullmatch(arg):
            arg = f"--v={m[1]}"
        elif arg == "-v" and i + 1 < len(argv) and argv[i + 1].isdigit():
            arg, i = f"--v={argv[i + 1]}", i + 1
        out.append(arg)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(normalized(sys.argv[1:] if argv is None else argv))
    logs.setup(_verbosity(args), timestamps=args.command == "run")
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is still caught
    except BrokenPipeError:
        # The reader went away (`nftproxy compile | head`): stop quietly, as `cat` does,
        # with the status a shell shows for that. Python would complain again when it
        # flushes stdout at exit, so stdout points at /dev/null from here on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (ConfigError, InputError, NftError, OSError, ValueError) as exc:
        print(f"nftproxy {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
