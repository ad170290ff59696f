"""KubeProxyConfiguration files (--config): mapped fields, reported fields, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nftproxy.proxyconfig import (
    ProxyConfigError,
    ProxyOptions,
    from_dict,
    load,
    parse,
    parse_duration,
)

# What `kube-proxy --write-config-to` writes (defaults filled in), edited as a cluster
# operator would for nftables mode, plus one misspelt field.
REALISTIC = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 10
  contentType: application/vnd.kubernetes.protobuf
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 15m0s
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ClusterCIDR
enableProfiling: false
featureGates:
  NFTablesProxyMode: true
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: " Worker-1 "
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 30s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 2
metricsBindAddress: 127.0.0.1:10249
mode: nftables
nftables:
  masqueradeAll: false
  masqueradeBit: 15
  minSyncPeriod: 500ms
  syncPeriod: 1m0s
nodePortAddresses:
- 192.168.0.0/24
oomScoreAdj: -999
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
healthzBindAdress: 0.0.0.0:10256
"""


def test_realistic_file_maps_supported_fields_and_reports_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "config.conf"
    path.write_text(REALISTIC)
    opts = load(path)
    assert opts == ProxyOptions(
        hostname_override="worker-1",
        node_ips=None,
        healthz_bind_address="0.0.0.0:10256",
        metrics_bind_address="127.0.0.1:10249",
        bind_address_hard_fail=False,
        cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"),
        nodeport_addresses=("192.168.0.0/24",),
        masquerade_all=False,
        masquerade_bit=15,
        sync_period=60.0,
        min_sync_period=0.5,
        kubeconfig="/var/lib/kube-proxy/kubeconfig.conf",
        verbosity=2,
        conntrack_tcp_established=86400,
        conntrack_tcp_close_wait=3600,
        conntrack_tcp_be_liberal=False,
        conntrack_udp=0,
        conntrack_udp_stream=0,
        warnings=opts.warnings,
    )
    assert list(opts.warnings) == [
        "clientConnection.burst: not supported (only clientConnection.kubeconfig is used); ignored",
        "clientConnection.contentType: not supported (only clientConnection.kubeconfig is used); ignored",
        "clientConnection.qps: not supported (only clientConnection.kubeconfig is used); ignored",
        "configSyncPeriod: informer resync is not used; ignored",
        "conntrack.maxPerCore: nf_conntrack_max is machine-wide: a node sysctl; ignored",
        "conntrack.min: nf_conntrack_max is machine-wide: a node sysctl; ignored",
        "featureGates.NFTablesProxyMode: feature gates are not supported; ignored",
        "iptables.localhostNodePorts: nftables mode never accepts NodePorts on localhost; ignored",
        "iptables.masqueradeBit: used only in iptables mode (nftproxy reads the nftables section); ignored",
        "iptables.minSyncPeriod: used only in iptables mode (nftproxy reads the nftables section); ignored",
        "iptables.syncPeriod: used only in iptables mode (nftproxy reads the nftables section); ignored",
        "ipvs.syncPeriod: used only in ipvs mode; ignored",
        "oomScoreAdj: not supported (set it on the container); ignored",
        "healthzBindAdress: unknown field; ignored",
    ]
    assert opts.health_timeout == 120.0


def test_kubeadm_style_zero_values_are_not_reported() -> None:
    opts = parse(
        """
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection: {acceptContentTypes: "", burst: 0, contentType: "", kubeconfig: /k.conf, qps: 0}
clusterCIDR: ""
configSyncPeriod: 0s
conntrack: {maxPerCore: null, min: null, tcpCloseWaitTimeout: null, tcpEstablishedTimeout: null}
enableProfiling: false
healthzBindAddress: ""
metricsBindAddress: ""
mode: ""
nodePortAddresses: null
oomScoreAdj: null
"""
    )
    assert opts.warnings == ()
    assert opts.kubeconfig == "/k.conf"
    assert opts.healthz_bind_address is None and opts.cluster_cidrs is None
    assert opts.health_timeout == 60.0


def test_unsupported_modes_are_reported_and_masquerade_all_from_either_section() -> None:
    opts = from_dict(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "ipvs",
            "detectLocalMode": "InterfaceNamePrefix",
            "detectLocal": {"interfaceNamePrefix": "veth"},
            "iptables": {"masqueradeAll": True},
            "bindAddress": "10.0.0.7",
            "healthzBindAddress": "::",
            "metricsBindAddress": "[::1]:9999",
            "logging": {"format": "json"},
        }
    )
    assert opts.warnings == (
        "mode: 'ipvs' is not supported: nftproxy always programs nftables",
        "detectLocalMode: 'InterfaceNamePrefix' is not supported: only ClusterCIDR (clusterCIDR) is",
        "logging.format: 'json' is not supported (text only); ignored",
        "detectLocal.interfaceNamePrefix: only detectLocalMode ClusterCIDR is supported; ignored",
    )
    assert opts.masquerade_all is True
    assert opts.node_ips == ("10.0.0.7",)
    assert opts.healthz_bind_address == "[::]:10256"
    assert opts.metrics_bind_address == "[::1]:9999"


def test_flags_win_over_the_file() -> None:
    opts = ProxyOptions(masquerade_bit=15, min_sync_period=2.0, hostname_override="a")
    merged = opts.with_flags(masquerade_bit=None, min_sync_period=0.25, hostname_override="b")
    assert (merged.masquerade_bit, merged.min_sync_period, merged.hostname_override) == (
        15,
        0.25,
        "b",
    )


HEAD = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


def test_node_port_addresses_primary_is_kept_for_the_node_to_resolve() -> None:
    opts = parse(HEAD + "nodePortAddresses: [primary]\n")
    assert opts.nodeport_addresses == ("primary",) and opts.warnings == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("clusterCIDR: 5\n", "clusterCIDR: expected a string, got an integer"),
        (
            "nftables:\n  masqueradeBit: true\n",
            "nftables.masqueradeBit: expected an integer, got a boolean",
        ),
        ("nftables:\n  masqueradeBit: 40\n", "nftables.masqueradeBit: 40 is not in 0..31"),
        ("nftables: yes\n", "nftables: expected a mapping, got a boolean"),
        (
            "nftables:\n  syncPeriod: 30\n",
            'nftables.syncPeriod: expected a duration string like "30s", got an integer',
        ),
        ("nftables:\n  minSyncPeriod: 1x\n", "nftables.minSyncPeriod: '1x' is not a duration"),
        ("conntrack:\n  udpTimeout: soon\n", "conntrack.udpTimeout: 'soon' is not a duration"),
        (
            "nodePortAddresses: 10.0.0.0/8\n",
            "nodePortAddresses: expected a list of strings, got a string",
        ),
        (
            "nodePortAddresses: [primary, 10.0.0.0/8]\n",
            "nodePortAddresses: 'primary' cannot be combined with CIDRs",
        ),
        ("nodePortAddresses: [10.0.0.300/8]\n", "nodePortAddresses: '10.0.0.300/8' is not a CIDR"),
        ("clusterCIDR: 10.244.0.0/33\n", "clusterCIDR: '10.244.0.0/33' is not a CIDR"),
        ("healthzBindAddress: nowhere:1\n", "healthzBindAddress: 'nowhere' is not an IP address"),
        (
            "metricsBindAddress: 127.0.0.1:99999\n",
            "metricsBindAddress: port '99999' is not in 0..65535",
        ),
        ("bindAddress: eth0\n", "bindAddress: 'eth0' is not an IP address"),
        ("featureGates:\n  Foo: 1\n", "featureGates.Foo: expected a boolean, got an integer"),
        ("ipvs:\n  excludeCIDRs: [1]\n", "ipvs.excludeCIDRs[0]: expected a string, got an integer"),
    ],
)
def test_wrong_values_are_errors_naming_the_field(body: str, message: str) -> None:
    with pytest.raises(ProxyConfigError) as err:
        parse(HEAD + body, "kp.yaml")
    assert str(err.value).startswith(f"kp.yaml: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: KubeProxyConfiguration\n", "apiVersion: expected"),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
            "kind: expected",
        ),
        ("- a\n", "expected a KubeProxyConfiguration mapping, got a list"),
        (HEAD + "---\n" + HEAD, "expected one KubeProxyConfiguration document, found 2"),
        ("a: [\n", "not YAML"),
    ],
)
def test_not_a_kube_proxy_configuration(text: str, message: str) -> None:
    with pytest.raises(ProxyConfigError, match=message):
        parse(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError, match="No such file"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("1s", 1.0),
        ("500ms", 0.5),
        ("1m0s", 60.0),
        ("1h2m3.5s", 3723.5),
        ("1.5h", 5400.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("10ns", 1e-8),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration("f", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "-1s", "1d", "1s2", "1 s", "1.s.s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ProxyConfigError, match=r"^f: "):
        parse_duration("f", text)


def test_service_cidrs_are_read_collapsed_and_a_bad_one_named() -> None:
    opts = parse(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
        "serviceCIDRs: [10.96.0.0/16, 10.96.1.0/24, fd00:96::/112]\n"
    )
    assert opts.service_cidrs == ("10.96.0.0/16", "fd00:96::/112")
    with pytest.raises(ProxyConfigError, match="serviceCIDRs: 'nope' is not a CIDR"):
        parse(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
            "serviceCIDRs: [nope]\n"
        )


def test_addresses_with_leading_zeros_are_read_as_decimal_like_kube_proxy() -> None:
    opts = from_dict(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "bindAddress": "010.000.000.007",
            "clusterCIDR": "010.244.0.0/16",
        }
    )
    assert opts.node_ips == ("10.0.0.7",)
    assert opts.cluster_cidrs == ("10.244.0.0/16",)


def test_conntrack_timeouts_follow_flags_then_the_file_then_kube_proxys_defaults() -> None:
    from nftproxy.cli import conntrack_settings, parser
    from nftproxy.conntrack import ConntrackSettings

    opts = parse(
        HEAD + "conntrack:\n  tcpCloseWaitTimeout: 30m\n  udpTimeout: 1m\n  tcpBeLiberal: true\n"
    )
    args = parser().parse_args(["run", "--conntrack-udp-timeout", "2m30s"])
    assert conntrack_settings(args, opts) == ConntrackSettings(
        tcp_established=86400, tcp_close_wait=1800, tcp_be_liberal=True, udp=150, udp_stream=0
    )
    assert conntrack_settings(parser().parse_args(["run"]), parse(HEAD)) == ConntrackSettings()
    assert ConntrackSettings(tcp_close_wait=0, tcp_established=0).wanted() == {}
