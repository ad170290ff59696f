"""A small cluster of network namespaces for end-to-end tests, the demo and benchmarks.

`topology` describes it, `netns` builds it (`Lab`), `echo` and `client` are the programs
run inside it (`python -m nftproxy.lab.echo`, `python -m nftproxy.lab.client`), `result`
is what a client reports and `session` a held connection. Shared by tests and benchmarks
too: `apiserver`, a real etcd + kube-apiserver on loopback, and the benchmarks' probes
`element_monitor` (when an address reaches nftables) and `connect_probe` (TCP connects),
both run inside a namespace with `python -m`.
"""

from nftproxy.kernel.netns import run_in_netns
from nftproxy.lab.netns import Lab, LabError, Started, new_prefix
from nftproxy.lab.result import Result
from nftproxy.lab.session import EchoSession, SessionError
from nftproxy.lab.topology import (
    External,
    Node,
    Pod,
    Topology,
    TopologyError,
    default_topology,
)

__all__ = [
    "EchoSession",
    "External",
    "Lab",
    "LabError",
    "Node",
    "Pod",
    "Result",
    "SessionError",
    "Started",
    "Topology",
    "TopologyError",
    "default_topology",
    "new_prefix",
    "run_in_netns",
]
