#!/usr/bin/env python3
"""Where the daemon's memory goes: its path from API objects to the kernel, minus HTTP.

    sudo .venv/bin/python bench/memory.py [--services 30000] [--endpoints 10] [--nodes 3] [--trace]

Builds the JSON of N Services and EndpointSlices (the bodies bench/api.py creates),
decodes and converts them as the reflectors do (msgspec structs -> model), hands them to
the daemon's ProxierSink and lets the Proxier make its first full sync into a new network
namespace through the same backend as `nftproxy run`. Prints VmRSS / VmHWM after each stage and,
with --trace, the Python allocations the model and the desired state hold (tracemalloc;
tracing slows everything and adds its own memory). The namespace is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import api
import msgspec
from api import CLUSTER_IP_BASE, POD_IP_BASE, service_body, slice_body
from common import ip4

from nftproxy.config import node_config
from nftproxy.daemon import ProxierSink
from nftproxy.kernel.backend import open_backend
from nftproxy.kube.objects import RawEndpointSlice, RawService, to_service, to_slice
from nftproxy.model import EndpointSlice, Service, ServiceName
from nftproxy.proxier import Proxier


def memory() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024
    return out


def stage(name: str, since: float, snap: Any = None) -> None:
    m = memory()
    print(
        f"{name:<28} RSS {m['VmRSS']:6.0f} MB  HWM {m['VmHWM']:6.0f} MB  "
        f"({time.perf_counter() - since:.2f} s)",
        flush=True,
    )
    if snap is not None:
        traced = tracemalloc.take_snapshot().compare_to(snap, "filename")
        for st in traced[:6]:
            print(f"    {st.size_diff / 2**20:7.1f} MB  {st.traceback[0].filename}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=30000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument(
        "--nodes",
        type=int,
        default=len(api.NODES),
        help="nodes the endpoints are spread over, this one included (a node's share of "
        "endpoints sizes its hairpin set)",
    )
    p.add_argument("--trace", action="store_true", help="tracemalloc per source file")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/memory.py needs root (a network namespace)", file=sys.stderr)
        return 1
    n, e = args.services, args.endpoints
    if args.nodes != len(api.NODES):
        api.NODES = ("node-a", *(f"node-{i}" for i in range(2, args.nodes + 1)))
    bodies = [
        (
            json.dumps(service_body(i, ip4(CLUSTER_IP_BASE + i))).encode(),
            json.dumps(slice_body(i, [ip4(POD_IP_BASE + i * e + j) for j in range(e)])).encode(),
        )
        for i in range(n)
    ]
    gc.collect()
    t = time.perf_counter()
    stage("start (bodies held)", t)
    if args.trace:
        tracemalloc.start()
    snap = tracemalloc.take_snapshot() if args.trace else None
    decode_service = msgspec.json.Decoder(RawService)
    decode_slice = msgspec.json.Decoder(RawEndpointSlice)
    services: dict[ServiceName, Service] = {}
    slices: dict[tuple[str, str], EndpointSlice] = {}
    for svc_body, slice_json in bodies:
        svc = to_service(decode_service.decode(svc_body))
        sl = to_slice(decode_slice.decode(slice_json))
        assert isinstance(svc, Service) and isinstance(sl, EndpointSlice)
        services[svc.id] = svc
        slices[(sl.namespace, sl.name)] = sl
    stage(f"decoded {n} Services", t, snap)
    netns = f"nftproxy-membench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        node = node_config(
            node_name="node-a", node_ips=["192.168.0.1"], cluster_cidrs=["10.128.0.0/9"]
        )
        proxier = Proxier(open_backend(netns), node, min_sync_period=0)
        sink = ProxierSink(proxier)
        sink.replace_services(services)
        sink.replace_slices(slices)
        del services, slices
        snap = tracemalloc.take_snapshot() if args.trace else None
        t = time.perf_counter()
        result = proxier.sync()
        gc.collect()
        stage(f"first sync ({result.mode})", t, snap)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
