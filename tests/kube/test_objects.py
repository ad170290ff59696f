"""Conversion of raw Service/EndpointSlice payloads into the model, and its error messages."""

from __future__ import annotations

import ipaddress
import pickle
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nftproxy.kube import objects
from nftproxy.kube.objects import (
    InvalidObject,
    RawEndpointSlice,
    RawService,
    Skip,
    canonical_ip,
    decode_json,
    from_builtins,
    to_service,
    to_slice,
)
from nftproxy.model import Endpoint, Protocol, Service, ServiceName, ServicePort, SlicePort


def service_dict(
    spec: dict[str, Any] | None = None,
    *,
    name: str = "web",
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    base: dict[str, Any] = {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": base | (spec or {}),
    }
    if status is not None:
        obj["status"] = status
    return obj


def service(spec: dict[str, Any] | None = None, **kwargs: Any) -> Service:
    result = to_service(from_builtins(service_dict(spec, **kwargs), RawService))
    assert isinstance(result, Service)
    return result


def service_error(spec: dict[str, Any] | None = None, **kwargs: Any) -> InvalidObject:
    with pytest.raises(InvalidObject) as info:
        to_service(from_builtins(service_dict(spec, **kwargs), RawService))
    return info.value


def slice_dict(
    endpoints: list[dict[str, Any]] | None = None,
    *,
    address_type: str = "IPv4",
    ports: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc12",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"} if labels is None else labels,
        },
        "addressType": address_type,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}] if ports is None else ports,
        "endpoints": [{"addresses": ["10.0.0.1"]}] if endpoints is None else endpoints,
    }


def endpoint_slice(**kwargs: Any) -> Any:
    return to_slice(from_builtins(slice_dict(**kwargs), RawEndpointSlice))


def slice_error(**kwargs: Any) -> InvalidObject:
    with pytest.raises(InvalidObject) as info:
        endpoint_slice(**kwargs)
    return info.value


# --- Services: the happy paths ---------------------------------------------------------------


def test_a_plain_cluster_ip_service_converts_with_defaults() -> None:
    svc = service()
    assert svc == Service(
        id=ServiceName("default", "web"),
        ports=(ServicePort("http", Protocol.TCP, 80),),
        cluster_ips=("10.96.0.10",),
        families=(4,),
    )


def test_decoding_from_json_bytes_matches_decoding_from_dicts() -> None:
    obj = service_dict({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]})
    from_json = to_service(decode_json(msgspec.json.encode(obj), RawService))
    assert from_json == to_service(from_builtins(obj, RawService))


def test_raw_structs_keep_kubernetes_field_names_when_encoded() -> None:
    raw = from_builtins(
        service_dict({"clusterIPs": ["10.96.0.10"], "externalIPs": ["192.0.2.1"]}), RawService
    )
    encoded = msgspec.json.decode(msgspec.json.encode(raw))
    assert encoded["spec"]["clusterIPs"] == ["10.96.0.10"]
    assert encoded["spec"]["externalIPs"] == ["192.0.2.1"]


def test_unknown_and_null_fields_do_not_break_decoding() -> None:
    obj = service_dict({"selector": {"app": "web"}, "ipFamilyPolicy": "SingleStack"})
    obj["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    obj["spec"]["externalIPs"] = None
    obj["status"] = {"loadBalancer": {}}
    assert to_service(from_builtins(obj, RawService)) == service()


def test_missing_namespace_defaults_to_default_like_kubectl() -> None:
    obj = service_dict()
    del obj["metadata"]["namespace"]
    result = to_service(from_builtins(obj, RawService))
    assert isinstance(result, Service)
    assert result.id == ServiceName("default", "web")


def test_protocol_defaults_to_tcp_and_keeps_udp_and_sctp() -> None:
    svc = service(
        {
            "ports": [
                {"name": "a", "port": 53},
                {"name": "b", "port": 53, "protocol": "UDP"},
                {"name": "c", "port": 9, "protocol": "SCTP"},
            ]
        }
    )
    assert [p.protocol for p in svc.ports] == [Protocol.TCP, Protocol.UDP, Protocol.SCTP]


def test_node_ports_are_kept_only_for_node_port_and_load_balancer_types() -> None:
    ports = [{"port": 80, "nodePort": 30080}]
    assert service({"type": "NodePort", "ports": ports}).ports[0].node_port == 30080
    assert service({"type": "LoadBalancer", "ports": ports}).ports[0].node_port == 30080
    assert service({"type": "ClusterIP", "ports": ports}).ports[0].node_port is None


def test_node_port_zero_means_absent() -> None:
    svc = service({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 0}]})
    assert svc.ports[0].node_port is None


def test_dual_stack_families_follow_cluster_ips_in_primary_first_order() -> None:
    svc = service(
        {
            "clusterIP": "fd00:10:96::0:a",
            "clusterIPs": ["fd00:10:96::0:a", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"],
        }
    )
    assert svc.cluster_ips == ("fd00:10:96::a", "10.96.0.10")
    assert svc.families == (6, 4)


def test_families_fall_back_to_ip_families_when_no_cluster_ip_is_allocated() -> None:
    svc = service({"clusterIP": "", "ipFamilies": ["IPv6"]})
    assert svc.cluster_ips == ()
    assert svc.families == (6,)


def test_families_default_to_ipv4_when_nothing_says_otherwise() -> None:
    assert service({"clusterIP": ""}).families == (4,)


def test_external_and_load_balancer_ips_are_canonicalised_and_deduplicated() -> None:
    svc = service(
        {
            "clusterIPs": ["10.96.0.10", "fd00::a"],
            "externalIPs": ["2001:DB8::1", "2001:db8:0::1", "192.0.2.1"],
            "type": "LoadBalancer",
        },
        status={"loadBalancer": {"ingress": [{"ip": "2001:db8:0:0::7"}, {"ip": "203.0.113.7"}]}},
    )
    assert svc.external_ips == ("2001:db8::1", "192.0.2.1")
    assert svc.load_balancer_ips == ("2001:db8::7", "203.0.113.7")


def test_proxy_mode_and_hostname_only_ingress_entries_are_not_programmed() -> None:
    ingress = [
        {"ip": "203.0.113.1", "ipMode": "VIP"},
        {"ip": "203.0.113.2", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"},
        {"ip": "203.0.113.3"},
    ]
    svc = service({"type": "LoadBalancer"}, status={"loadBalancer": {"ingress": ingress}})
    assert svc.load_balancer_ips == ("203.0.113.1", "203.0.113.3")


def test_source_ranges_are_stripped_and_canonicalised() -> None:
    ranges = [" 10.1.2.3/8 ", "2001:DB8::/32", "192.0.2.1"]
    svc = service({"type": "LoadBalancer", "loadBalancerSourceRanges": ranges})
    assert svc.load_balancer_source_ranges == ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32")


def test_service_addresses_with_leading_zeros_are_read_as_decimal_like_kubernetes() -> None:
    # k8s.io/utils/net ParseIPSloppy: 010 is ten, not octal eight. Stored in standard form,
    # so respellings of one address count once and clusterIP matches clusterIPs[0].
    svc = service(
        {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.096.000.010", "fd00::000a"],
            "externalIPs": ["192.000.002.001", "192.0.2.1", "010.0.0.1"],
            "type": "LoadBalancer",
            "loadBalancerSourceRanges": ["010.001.000.000/16", "203.0.113.07/032"],
        },
        status={"loadBalancer": {"ingress": [{"ip": "203.000.113.007"}]}},
    )
    assert svc.cluster_ips == ("10.96.0.10", "fd00::a")
    assert svc.external_ips == ("192.0.2.1", "10.0.0.1")
    assert svc.load_balancer_ips == ("203.0.113.7",)
    assert svc.load_balancer_source_ranges == ("10.1.0.0/16", "203.0.113.7/32")
    assert service({"clusterIP": "10.96.00.011"}).cluster_ips == ("10.96.0.11",)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "NodePort"}, True),
        ({"type": "LoadBalancer"}, True),
        ({"type": "ClusterIP"}, False),
        # kube-proxy also honours the policy when externalIPs make a ClusterIP reachable.
        ({"type": "ClusterIP", "externalIPs": ["192.0.2.1"]}, True),
    ],
)
def test_external_policy_local_applies_only_to_externally_reachable_services(
    spec: dict[str, Any], expected: bool
) -> None:
    assert service(spec | {"externalTrafficPolicy": "Local"}).external_policy_local is expected


def test_internal_policy_local_is_read_for_every_type() -> None:
    assert service({"internalTrafficPolicy": "Local"}).internal_policy_local
    assert not service({"internalTrafficPolicy": "Cluster"}).internal_policy_local


def test_health_check_node_port_is_kept_only_for_local_load_balancers() -> None:
    local_lb = {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}
    assert service(local_lb | {"healthCheckNodePort": 32000}).health_check_node_port == 32000
    cluster_lb = {"type": "LoadBalancer", "healthCheckNodePort": 32000}
    assert service(cluster_lb).health_check_node_port is None
    local_np = {"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000}
    assert service(local_np).health_check_node_port is None


def test_client_ip_affinity_defaults_to_three_hours() -> None:
    assert service({"sessionAffinity": "ClientIP"}).affinity_timeout == 10800
    assert service({"sessionAffinity": "None"}).affinity_timeout is None


def test_client_ip_affinity_uses_the_configured_timeout() -> None:
    spec = {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
    }
    assert service(spec).affinity_timeout == 600


def test_a_single_port_may_be_unnamed() -> None:
    assert service({"ports": [{"port": 80}]}).ports[0].name == ""


def test_same_port_number_with_different_protocols_is_allowed() -> None:
    svc = service(
        {"ports": [{"name": "t", "port": 53}, {"name": "u", "port": 53, "protocol": "UDP"}]}
    )
    assert len(svc.ports) == 2


# --- Services: skipped ----------------------------------------------------------------------


def test_external_name_services_are_skipped() -> None:
    obj = service_dict({"type": "ExternalName", "externalName": "db.example.com", "clusterIP": ""})
    result = to_service(from_builtins(obj, RawService))
    assert isinstance(result, Skip)
    assert "ExternalName" in result.reason


@pytest.mark.parametrize("spec", [{"clusterIP": "None"}, {"clusterIPs": ["None"]}])
def test_headless_services_are_skipped(spec: dict[str, Any]) -> None:
    result = to_service(from_builtins(service_dict(spec), RawService))
    assert isinstance(result, Skip)
    assert "headless" in result.reason


def test_services_labelled_for_another_proxy_are_skipped_before_validation() -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "other"}
    obj = service_dict({"ports": [{"port": 70000}]}, labels=labels)
    result = to_service(from_builtins(obj, RawService), service_proxy_name="mine")
    assert isinstance(result, Skip)
    assert "other" in result.reason


def test_services_labelled_with_our_proxy_name_are_handled() -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "mine"}
    raw = from_builtins(service_dict(labels=labels), RawService)
    assert isinstance(to_service(raw, service_proxy_name="mine"), Service)
    assert isinstance(to_service(raw), Skip)


def test_an_empty_proxy_name_label_still_means_another_proxy() -> None:
    labels = {"service.kubernetes.io/service-proxy-name": ""}
    assert isinstance(to_service(from_builtins(service_dict(labels=labels), RawService)), Skip)


# --- Services: errors -----------------------------------------------------------------------


def test_the_error_message_names_kind_object_field_and_value_on_one_line() -> None:
    err = service_error({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 70000}]})
    err.source = "services.yaml"
    assert str(err) == (
        "services.yaml: Service default/web: spec.ports[1].port: 70000 is out of range 1-65535"
    )
    assert (err.kind, err.namespace, err.name) == ("Service", "default", "web")
    assert err.field == "spec.ports[1].port"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"ports": [{"port": 0}]}, "spec.ports[0].port", "0 is out of range 1-65535"),
        ({"ports": [{"name": "x"}]}, "spec.ports[0].port", "is required"),
        (
            {"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]},
            "spec.ports[0].nodePort",
            "70000 is out of range",
        ),
        ({"ports": [{"port": 80, "protocol": "tcp"}]}, "spec.ports[0].protocol", '"tcp"'),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol", "TCP, UDP"),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
            "spec.ports[1].name",
            'duplicate port name "a"',
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"port": 81}]},
            "spec.ports[1].name",
            "more than one port",
        ),
        (
            {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "TCP"}]},
            "spec.ports[1]",
            "duplicate port 80/TCP",
        ),
        (
            {
                "type": "NodePort",
                "ports": [
                    {"name": "a", "port": 80, "nodePort": 30001},
                    {"name": "b", "port": 81, "nodePort": 30001},
                ],
            },
            "spec.ports[1].nodePort",
            "duplicate node port 30001/TCP",
        ),
        ({"ports": [{"port": "80"}]}, "spec.ports[0].port", "Expected `int`, got `str`"),
        ({"clusterIP": "10.96.0.256"}, "spec.clusterIP", '"10.96.0.256" is not a valid IP'),
        ({"clusterIP": "::ffff:10.96.0.1"}, "spec.clusterIP", "IPv4-mapped"),
        ({"clusterIP": "fe80::1%eth0"}, "spec.clusterIP", "zone index"),
        (
            {"clusterIPs": ["10.96.0.10", "10.96.0.11"]},
            "spec.clusterIPs[1]",
            "second IPv4 cluster IP",
        ),
        ({"clusterIPs": ["10.96.0.10", "bogus"]}, "spec.clusterIPs[1]", '"bogus"'),
        ({"clusterIP": "", "ipFamilies": ["IPv5"]}, "spec.ipFamilies[0]", '"IPv5"'),
        (
            {"externalIPs": ["192.0.2.1", "2001:db8::1"]},
            "spec.externalIPs[1]",
            '"2001:db8::1" is IPv6 but the Service is IPv4',
        ),
        ({"externalIPs": ["192.0.2.x"]}, "spec.externalIPs[0]", "not a valid IP"),
        (
            {"loadBalancerSourceRanges": ["10.0.0.0/33"]},
            "spec.loadBalancerSourceRanges[0]",
            '"10.0.0.0/33" is not a valid CIDR',
        ),
        ({"type": "Magic"}, "spec.type", '"Magic" is not one of ClusterIP, NodePort'),
        ({"externalTrafficPolicy": "local"}, "spec.externalTrafficPolicy", '"local"'),
        ({"internalTrafficPolicy": "Nearby"}, "spec.internalTrafficPolicy", '"Nearby"'),
        ({"sessionAffinity": "Cookie"}, "spec.sessionAffinity", '"Cookie"'),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}},
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "86401 is out of range 1-86400",
        ),
        (
            {
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 65536,
            },
            "spec.healthCheckNodePort",
            "65536 is out of range",
        ),
        (
            {"ports": [{"name": f"p{i}", "port": i + 1} for i in range(1001)]},
            "spec.ports",
            "absurd size: 1001 entries (limit 1000)",
        ),
        (
            {"externalIPs": [f"192.0.2.{i % 250}" for i in range(101)]},
            "spec.externalIPs",
            "absurd size: 101",
        ),
        (
            {"loadBalancerSourceRanges": ["10.0.0.0/8"] * 101},
            "spec.loadBalancerSourceRanges",
            "absurd size",
        ),
    ],
)
def test_invalid_service_fields_are_reported_by_path(
    spec: dict[str, Any], field: str, message: str
) -> None:
    err = service_error(spec)
    assert err.field == field
    assert message in err.message
    assert str(err).startswith(f"Service default/web: {field}: ")


def test_load_balancer_ips_of_a_family_the_service_lacks_are_errors() -> None:
    status = {"loadBalancer": {"ingress": [{"ip": "2001:db8::1"}]}}
    err = service_error({"type": "LoadBalancer"}, status=status)
    assert err.field == "status.loadBalancer.ingress[0].ip"
    assert "IPv6" in err.message


def test_too_many_ingress_entries_are_an_absurd_size() -> None:
    status = {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}] * 101}}
    err = service_error({"type": "LoadBalancer"}, status=status)
    assert err.field == "status.loadBalancer.ingress"


def test_a_service_without_a_name_is_an_error() -> None:
    obj = service_dict()
    del obj["metadata"]["name"]
    with pytest.raises(InvalidObject) as info:
        to_service(from_builtins(obj, RawService))
    assert info.value.field == "metadata.name"
    assert str(info.value) == "Service default/<unnamed>: metadata.name: is required"


def test_decode_errors_name_the_object_when_its_metadata_is_readable() -> None:
    obj = service_dict({"clusterIPs": "10.96.0.1"})
    with pytest.raises(InvalidObject) as info:
        decode_json(msgspec.json.encode(obj), RawService)
    assert str(info.value).startswith("Service default/web: spec.clusterIPs: Expected `array`")


def test_malformed_json_is_an_invalid_object() -> None:
    with pytest.raises(InvalidObject, match="truncated"):
        decode_json(b'{"metadata": {', RawService)


def test_invalid_object_survives_pickling_with_its_source() -> None:
    err = InvalidObject("Service", "ns", "n", "spec.type", "bad", source="f.yaml")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) == "f.yaml: Service ns/n: spec.type: bad"


def test_huge_rejected_values_are_cut_short_in_the_message() -> None:
    err = slice_error(endpoints=[{"addresses": ["1" * 10**6]}])
    assert err.field == "endpoints[0].addresses[0]"
    assert err.message.startswith('"1111')
    assert err.message.endswith("... (1,000,028 characters)")
    assert len(str(err)) < 1200


def test_multi_line_messages_are_folded_onto_one_line() -> None:
    err = InvalidObject("file", "", "", "line 3", "mapping values\n  are not allowed")
    assert str(err) == "line 3: mapping values are not allowed"


# --- EndpointSlices -------------------------------------------------------------------------


def test_a_slice_converts_with_condition_defaults() -> None:
    result = endpoint_slice(
        endpoints=[
            {"addresses": ["10.0.0.1", "10.0.0.99"]},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {
                "addresses": ["10.0.0.3"],
                "conditions": {"ready": False, "serving": True, "terminating": True},
                "nodeName": "node-a",
                "zone": "zone-a",
            },
        ]
    )
    assert result.service == ServiceName("default", "web")
    assert result.family == 4
    assert result.ports == (SlicePort("http", Protocol.TCP, 8080),)
    assert result.endpoints == (
        Endpoint("10.0.0.1"),
        Endpoint("10.0.0.2", ready=False, serving=False),
        Endpoint("10.0.0.3", "node-a", "zone-a", ready=False, serving=True, terminating=True),
    )


def test_ipv6_slice_addresses_are_canonicalised() -> None:
    result = endpoint_slice(
        address_type="IPv6", endpoints=[{"addresses": ["FD00:0:0::0:1"]}, {"addresses": ["::1:2"]}]
    )
    assert [e.ip for e in result.endpoints] == ["fd00::1", "::1:2"]
    assert result.family == 6


def test_slice_addresses_with_leading_zeros_are_read_as_decimal_like_kubernetes() -> None:
    v4 = endpoint_slice(endpoints=[{"addresses": ["010.000.000.001"]}, {"addresses": ["10.0.0.2"]}])
    assert [e.ip for e in v4.endpoints] == ["10.0.0.1", "10.0.0.2"]
    v6 = endpoint_slice(address_type="IPv6", endpoints=[{"addresses": ["fd00::00000001"]}])
    assert [e.ip for e in v6.endpoints] == ["fd00::1"]


def test_hints_are_none_when_absent_and_sets_when_present() -> None:
    result = endpoint_slice(
        endpoints=[
            {"addresses": ["10.0.0.1"]},
            {"addresses": ["10.0.0.2"], "hints": {}},
            {
                "addresses": ["10.0.0.3"],
                "hints": {"forZones": [{"name": "a"}, {"name": "b"}], "forNodes": [{"name": "n1"}]},
            },
            {"addresses": ["10.0.0.4"], "hints": {"forZones": []}},
        ]
    )
    hints = [(e.zone_hints, e.node_hints) for e in result.endpoints]
    assert hints == [
        (None, None),
        (None, None),
        (frozenset({"a", "b"}), frozenset({"n1"})),
        (frozenset(), None),
    ]


def test_slice_ports_default_name_and_protocol_and_drop_nil_ports() -> None:
    result = endpoint_slice(ports=[{"port": 53, "protocol": "UDP"}, {"name": "x"}, {"port": 80}])
    assert result.ports == (SlicePort("", Protocol.UDP, 53), SlicePort("", Protocol.TCP, 80))


def test_null_endpoints_and_ports_give_an_empty_slice() -> None:
    obj = slice_dict()
    obj["endpoints"] = None
    obj["ports"] = None
    result = to_slice(from_builtins(obj, RawEndpointSlice))
    assert not isinstance(result, Skip)
    assert (result.endpoints, result.ports) == ((), ())


def test_fqdn_slices_are_skipped() -> None:
    result = endpoint_slice(address_type="FQDN", endpoints=[{"addresses": ["db.example.com"]}])
    assert isinstance(result, Skip)
    assert "FQDN" in result.reason


def test_slices_without_a_service_name_label_are_skipped() -> None:
    result = endpoint_slice(labels={"app": "web"})
    assert isinstance(result, Skip)
    assert "kubernetes.io/service-name" in result.reason


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"address_type": "IPv5"}, "addressType", '"IPv5" is not IPv4, IPv6 or FQDN'),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.300"]}]},
            "endpoints[1].addresses[0]",
            '"10.0.0.300" is not a valid IP address',
        ),
        (
            {"endpoints": [{"addresses": ["fd00::1"]}]},
            "endpoints[0].addresses[0]",
            '"fd00::1" is IPv6 but addressType is IPv4',
        ),
        (
            {"address_type": "IPv6", "endpoints": [{"addresses": ["::ffff:10.0.0.1"]}]},
            "endpoints[0].addresses[0]",
            "IPv4-mapped",
        ),
        ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses", "must not be empty"),
        ({"endpoints": [{"nodeName": "n"}]}, "endpoints[0].addresses", "is required"),
        ({"ports": [{"port": 0}]}, "ports[0].port", "0 is out of range 1-65535"),
        ({"ports": [{"port": 80, "protocol": "HTTP"}]}, "ports[0].protocol", '"HTTP"'),
        (
            {"endpoints": [{"addresses": [f"10.0.{i // 250}.{i % 250}"]} for i in range(1001)]},
            "endpoints",
            "absurd size: 1001 entries (limit 1000)",
        ),
        (
            {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]},
            "endpoints[0].conditions.ready",
            "Expected `bool`, got `str`",
        ),
    ],
)
def test_invalid_slice_fields_are_reported_by_path(
    kwargs: dict[str, Any], field: str, message: str
) -> None:
    err = slice_error(**kwargs)
    assert err.field == field
    assert message in err.message
    assert str(err).startswith(f"EndpointSlice default/web-abc12: {field}: ")


def ten_endpoints_with(bad: dict[int, str]) -> list[dict[str, Any]]:
    return [{"addresses": [bad.get(i, f"10.0.0.{i + 1}")]} for i in range(10)]


def test_a_bad_endpoint_is_reported_and_the_slice_keeps_its_good_endpoints() -> None:
    reported: list[InvalidObject] = []
    raw = from_builtins(slice_dict(ten_endpoints_with({3: "10.0.0.999"})), RawEndpointSlice)
    result = to_slice(raw, report=reported.append)
    assert not isinstance(result, Skip)
    assert [e.ip for e in result.endpoints] == [f"10.0.0.{i + 1}" for i in range(10) if i != 3]
    assert [str(e) for e in reported] == [
        'EndpointSlice default/web-abc12: endpoints[3].addresses[0]: "10.0.0.999" is not a'
        " valid IP address"
    ]


def test_each_endpoint_of_the_wrong_family_is_reported_separately() -> None:
    reported: list[InvalidObject] = []
    endpoints = ten_endpoints_with({0: "fd00::1", 9: "fd00::2"})
    result = to_slice(
        from_builtins(slice_dict(endpoints), RawEndpointSlice), report=reported.append
    )
    assert not isinstance(result, Skip)
    assert len(result.endpoints) == 8
    assert [(e.field, e.message) for e in reported] == [
        ("endpoints[0].addresses[0]", '"fd00::1" is IPv6 but addressType is IPv4'),
        ("endpoints[9].addresses[0]", '"fd00::2" is IPv6 but addressType is IPv4'),
    ]


def test_a_slice_without_one_usable_endpoint_is_rejected_whole() -> None:
    reported: list[InvalidObject] = []
    endpoints = [{"addresses": ["fd00::1"]}, {"addresses": []}, {"addresses": ["fd00::3"]}]
    raw = from_builtins(slice_dict(endpoints), RawEndpointSlice)
    with pytest.raises(InvalidObject) as info:
        to_slice(raw, report=reported.append)
    assert str(info.value) == (
        "EndpointSlice default/web-abc12: endpoints[0].addresses[0]: "
        '"fd00::1" is IPv6 but addressType is IPv4; none of the slice\'s 3 endpoints is usable'
    )
    assert reported == []


def test_an_empty_slice_is_still_valid_when_endpoints_may_be_reported() -> None:
    result = to_slice(from_builtins(slice_dict([]), RawEndpointSlice), report=print)
    assert not isinstance(result, Skip)
    assert result.endpoints == ()


def test_without_a_report_callback_a_bad_endpoint_rejects_the_whole_slice() -> None:
    err = slice_error(endpoints=ten_endpoints_with({3: "10.0.0.999"}))
    assert err.field == "endpoints[3].addresses[0]"
    assert "none of" not in err.message


# --- Address canonicalisation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.1.2.3", ("10.1.2.3", 4)),
        ("10.1.2.03", ("10.1.2.3", 4)),
        ("2001:DB8::1", ("2001:db8::1", 6)),
        ("2001:db8:0:0:0:0:0:1", ("2001:db8::1", 6)),
        ("1:0:0:2:0:0:0:4", ("1:0:0:2::4", 6)),
        ("::1.2.3.4", ("::102:304", 6)),
        ("::", ("::", 6)),
    ],
)
def test_canonical_ip_matches_the_ipaddress_spelling(text: str, expected: tuple[str, int]) -> None:
    assert canonical_ip(text) == expected


@pytest.mark.parametrize(
    "text", ["10.1.2.256", "10.1.2", " 10.1.2.3", "::ffff:1.2.3.4", "fe80::1%eth0", "", "1::2::3"]
)
def test_canonical_ip_rejects_ambiguous_or_unusable_spellings(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_ip(text)


# No deadline: a loaded machine may stall one example past Hypothesis' default 200 ms.
@settings(deadline=None)
@given(st.ip_addresses(v=6))
def test_canonical_ip_agrees_with_ipaddress_for_every_ipv6_spelling(addr: Any) -> None:
    if addr.ipv4_mapped is not None:
        return
    expected = (str(addr), 6)
    assert canonical_ip(str(addr)) == expected
    assert canonical_ip(addr.exploded) == expected
    assert canonical_ip(addr.exploded.upper()) == expected


@settings(deadline=None)
@given(st.ip_addresses(v=4))
def test_canonical_ip_agrees_with_ipaddress_for_every_ipv4_address(addr: Any) -> None:
    assert canonical_ip(str(addr)) == (str(ipaddress.ip_address(str(addr))), 4)


def test_standard_spellings_never_reach_the_slow_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # Leading zeros are the slow path's business; 100k-endpoint loads rely on the usual
    # spellings costing one inet_pton/inet_ntop round trip.
    def slow(text: str) -> Any:
        raise AssertionError(f"{text} took the slow path")

    monkeypatch.setattr(objects, "_canonical_ip_slow", slow)
    assert canonical_ip("10.180.0.1") == ("10.180.0.1", 4)
    if objects.FAST_IPV6:
        assert canonical_ip("fd00::1") == ("fd00::1", 6)


def test_objects_with_the_same_ports_share_one_port_tuple():
    # Thousands of Services with "80/TCP http" hold one tuple between them, not one each.
    a, b = service(name="a"), service(name="b", spec={"clusterIP": "10.96.0.11"})
    assert a.ports == b.ports and a.ports is b.ports and a.families is b.families
    other = service(name="c", spec={"ports": [{"name": "http", "port": 81}]})
    assert other.ports != a.ports
    s1, s2 = endpoint_slice(), endpoint_slice(endpoints=[{"addresses": ["10.0.0.2"]}])
    assert s1.ports is s2.ports and s1 != s2


# --- ServiceCIDR ----------------------------------------------------------------------------


def test_a_service_cidr_gives_its_ranges_in_canonical_form() -> None:
    from nftproxy.kube.objects import RawServiceCIDR, from_builtins, to_service_cidr

    raw = from_builtins(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["010.096.0.0/12", "FD00:96:0::/112"]},
        },
        RawServiceCIDR,
    )
    got = to_service_cidr(raw)
    assert (got.name, got.cidrs) == ("kubernetes", ("10.96.0.0/12", "fd00:96::/112"))


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"cidrs": ["10.96.0.0/33"]}, "spec.cidrs[0]", '"10.96.0.0/33" is not a valid CIDR'),
        ({"cidrs": ["a", "b", "c"]}, "spec.cidrs", "at most 2"),
    ],
)
def test_a_bad_service_cidr_is_named_with_its_field(spec: Any, field: str, message: str) -> None:
    from nftproxy.kube.objects import RawServiceCIDR, from_builtins, to_service_cidr

    raw = from_builtins({"metadata": {"name": "extra"}, "spec": spec}, RawServiceCIDR)
    with pytest.raises(InvalidObject) as err:
        to_service_cidr(raw)
    assert (err.value.kind, err.value.name, err.value.field) == ("ServiceCIDR", "extra", field)
    assert message in str(err.value)
    assert str(err.value).startswith("ServiceCIDR extra: ")
