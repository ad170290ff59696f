"""Small clusters that real-kernel tests apply into a namespace: `cluster()` (web, dns and
an empty Service; `builder` makes its ruleset) for the applying and backend tests, and
WEB, API and SLICES with `applied()` (in generation g1) for the verifying and commit
monitor tests."""

from __future__ import annotations

from nftproxy import applying
from nftproxy.kernel.backend import open_backend
from nftproxy.ruleset.compile import Names
from tests.support.builders import build, endpoints, ep, port, service


def cluster(n_endpoints: int = 3, *, affinity: bool = False):
    svcs = [
        service(
            "web",
            ports=[port(80, node_port=30080)],
            cluster_ips=("10.96.0.10", "fd00:96::10"),
            load_balancer_ips=("198.51.100.10",),
            load_balancer_source_ranges=("203.0.113.0/24",),
        ),
        service(
            "dns",
            cluster_ips=("10.96.0.53",),
            ports=[port(53, name="dns", proto="udp")],
            affinity_timeout=300 if affinity else None,
        ),
        service("empty", cluster_ips=("10.96.0.99",)),
    ]
    slices = [
        endpoints(
            "web",
            [
                ep(f"10.244.{i % 2}.{i + 2}", "node-a" if i % 2 else "node-b")
                for i in range(n_endpoints)
            ],
        ),
        endpoints("web", [ep("fd00:244::5")], family=6),
        endpoints(
            "dns",
            [ep("10.244.0.53"), ep("10.244.1.53", "node-b")],
            name="dns",
            proto="udp",
            target=53,
        ),
    ]
    return svcs, slices


def builder(svcs, slices):
    return lambda names: build(svcs, slices, names=names)


WEB = service("web", ports=[port(80, node_port=30080)], load_balancer_ips=("198.51.100.1",))
API = service("api", cluster_ips=("10.96.0.11",), ports=[port(81)])
SLICES = [
    endpoints("web", [ep("10.244.1.1"), ep("10.244.1.2"), ep("10.244.2.3", "node-b")]),
    endpoints("api", [ep("10.244.1.9")], target=9090),
]


def applied(netns: str):
    backend = open_backend(netns)
    ruleset = build([WEB, API], SLICES, names=Names("g1-"))
    applying.run_plan(backend, applying.make_plan(lambda names: ruleset, None))
    return backend, ruleset
