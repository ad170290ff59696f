"""The command line as a user runs it: `python -m nftproxy ...` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kernel import nft_in
from samples import frontends, two_files

DATA = Path(__file__).parent / "data"
CLUSTER = str(DATA / "cluster.yaml")
NODE = ["--node-name", "node-a", "--node-ip", "192.168.0.1", "--cluster-cidr", "10.244.0.0/16"]


def nftproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nftproxy", *args], capture_output=True, text=True, check=False
    )


def test_compile_prints_a_ruleset_nft_accepts(netns):
    out = nftproxy("compile", CLUSTER, *NODE)
    assert out.returncode == 0, out.stderr
    assert "10.96.0.10 . tcp . 80 : goto g1-pick4-tcp-2" in out.stdout
    nft_in(netns, "-c", "-f", "-", stdin=out.stdout)


def test_explain_prints_endpoints_with_probabilities_and_path():
    out = nftproxy("explain", CLUSTER, *NODE, "--to", "10.96.0.10:80/tcp", "--from", "10.244.3.3")
    assert out.returncode == 0, out.stderr
    assert "50.00%  dnat   10.244.1.5:8080" in out.stdout
    assert "50.00%  dnat   10.244.2.7:8080" in out.stdout
    assert "services4 -> @frontends4 -> pick4-tcp-2" in out.stdout


def test_explain_json_for_a_node_port_reports_masquerade():
    out = nftproxy(
        "explain", CLUSTER, *NODE, "--to", "192.168.0.1:30443", "--via", "nodeport", "--json"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {r["endpoint"]: r["probability"] for r in doc["results"]} == {
        "10.244.1.5:8443": 0.5,
        "10.244.2.7:8443": 0.5,
    }
    assert all(r["masquerade"] for r in doc["results"])


def test_explain_rejects_a_malformed_target_with_a_clear_message():
    out = nftproxy("explain", CLUSTER, "--to", "10.96.0.10/tcp")
    assert out.returncode == 1
    assert "--to" in out.stderr and "port" in out.stderr


def test_a_bad_object_is_reported_and_every_other_object_still_compiles(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\n"
        "spec:\n  clusterIP: 10.96.0.77\n  ports: [{name: x, port: 70000}]\n"
    )
    out = nftproxy("compile", CLUSTER, str(bad), *NODE)
    assert out.returncode == 3
    assert "Service shop/broken" in out.stderr and "spec.ports[0].port" in out.stderr
    assert "bad.yaml" in out.stderr
    assert "10.96.0.10 . tcp . 80" in out.stdout
    assert "10.96.0.77" not in out.stdout


def test_apply_plan_and_cleanup_in_a_namespace(netns):
    nft_in(netns, "add", "table", "ip", "keepme")
    applied = nftproxy("apply", CLUSTER, *NODE, "--netns", netns)
    assert applied.returncode == 0, applied.stderr
    assert "generation 1" in applied.stderr
    table = nft_in(netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
    assert "10.244.1.5 . 8080" in table
    plan = nftproxy("plan", CLUSTER, *NODE, "--netns", netns)
    assert plan.returncode == 0
    assert plan.stdout.startswith("# noop")
    gone = nftproxy("cleanup", "--netns", netns)
    assert gone.returncode == 0
    assert nft_in(netns, "list", "tables").split() == ["table", "ip", "keepme"]


def test_plan_shows_only_the_change_after_an_endpoint_moves(netns, tmp_path):
    assert nftproxy("apply", CLUSTER, *NODE, "--netns", netns).returncode == 0
    moved = tmp_path / "cluster.yaml"
    moved.write_text(Path(CLUSTER).read_text().replace("10.244.2.7", "10.244.2.8"))
    plan = nftproxy("plan", str(moved), *NODE, "--netns", netns)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("# incremental")
    assert "delete element inet nftproxy g1-endpoints4-tcp { 10.96.0.10 . 80 . 1," in plan.stdout
    assert "10.96.0.10 . 80 . 1 : 10.244.2.8 . 8080" in plan.stdout
    # The endpoint that stayed is not touched.
    assert "10.244.1.5" not in plan.stdout


def test_apply_to_a_missing_namespace_fails_clearly():
    out = nftproxy("apply", CLUSTER, "--netns", "nftproxy-test-does-not-exist")
    assert out.returncode == 1
    assert "does not exist" in out.stderr


@pytest.mark.parametrize("args", [["--cluster-cidr", "10.0.0.0/33"], ["--node-ip", "banana"]])
def test_bad_node_options_name_the_option(args):
    out = nftproxy("compile", CLUSTER, *args)
    assert out.returncode == 1
    assert args[0].lstrip("-") in out.stderr


def test_nodeport_addresses_that_select_no_node_ip_are_a_warning_naming_both_options():
    out = nftproxy("compile", CLUSTER, *NODE, "--nodeport-addresses", "172.16.0.0/24")
    assert out.returncode == 0, out.stderr
    assert (
        "warning: --nodeport-addresses 172.16.0.0/24: this node has no IPv4 address" in out.stderr
    )
    assert "(--node-ip 192.168.0.1): no NodePort is served over IPv4" in out.stderr
    served = nftproxy("compile", CLUSTER, *NODE, "--nodeport-addresses", "192.168.0.0/16")
    assert served.returncode == 0 and "warning" not in served.stderr, served.stderr
    assert "add element inet nftproxy g1-nodeport-ips4 { 192.168.0.1 }" in served.stdout


def test_a_host_prefix_option_or_source_range_survives_a_second_apply(netns, tmp_path):
    """The reported bug: the kernel lists 192.168.0.2/32 back as 192.168.0.2, so `plan`
    re-added one and deleted the other, and a second `apply` emptied the set: all
    ClusterIP traffic from there seen as outside (or, for a source range, all load-balancer
    traffic) refused."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        Path(CLUSTER)
        .read_text()
        .replace(
            "    type: LoadBalancer\n",
            "    type: LoadBalancer\n    loadBalancerSourceRanges: [203.0.113.7/32]\n",
        )
    )
    args = [str(cluster), *NODE, "--cluster-cidr", "192.168.0.2/32", "--netns", netns]
    for _ in range(2):
        applied = nftproxy("apply", *args)
        assert applied.returncode == 0, applied.stderr
    plan = nftproxy("plan", *args)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("# noop")
    addresses = nft_in(netns, "list", "set", "inet", "nftproxy", "g1-cluster-cidrs4")
    assert "192.168.0.2" in addresses and "10.244.0.0/16" in addresses
    allowed = nft_in(netns, "list", "set", "inet", "nftproxy", "g1-firewall-allow4")
    assert "198.51.100.10 . tcp . 80 . 203.0.113.7" in allowed
    assert "198.51.100.10 . tcp . 443 . 203.0.113.7" in allowed


# --- input mistakes never delete what is running --------------------------------------------


def generation_id(netns: str) -> int:
    from nftproxy.nft import open_backend

    return open_backend(netns).generation()


def test_a_mistyped_path_is_an_error_that_changes_nothing(netns):
    assert nftproxy("apply", CLUSTER, *NODE, "--netns", netns).returncode == 0
    before = generation_id(netns)
    typo = CLUSTER.replace("cluster.yaml", "clusterr.yaml")
    for command in ("apply", "plan"):
        out = nftproxy(command, typo, *NODE, "--netns", netns)
        assert out.returncode == 1, out.stderr
        assert "clusterr.yaml" in out.stderr and "nothing was changed" in out.stderr
        assert out.stdout == ""
    assert generation_id(netns) == before
    assert "10.96.0.10 . tcp . 80" in frontends(netns)


def test_a_file_that_no_longer_parses_is_an_error_that_changes_nothing(netns, tmp_path):
    directory = two_files(tmp_path)
    assert nftproxy("apply", str(directory), *NODE, "--netns", netns).returncode == 0
    before = generation_id(netns)
    (directory / "dns.yaml").write_text("kind: [\n")
    out = nftproxy("apply", str(directory), *NODE, "--netns", netns)
    assert out.returncode == 1
    assert "dns.yaml" in out.stderr and "nothing was changed" in out.stderr
    assert generation_id(netns) == before
    compiled = nftproxy("compile", str(directory), *NODE)
    assert compiled.returncode == 1 and compiled.stdout == ""


def test_an_empty_input_changes_nothing_unless_pruned(netns, tmp_path):
    directory = two_files(tmp_path)
    assert nftproxy("apply", str(directory), *NODE, "--netns", netns).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.yaml").write_text("# nothing here yet\n")
    out = nftproxy("apply", str(empty), *NODE, "--netns", netns)
    assert out.returncode == 1 and "no Services or EndpointSlices" in out.stderr
    assert "10.96.0.53" in frontends(netns)
    pruned = nftproxy("apply", str(empty), *NODE, "--netns", netns, "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "10.96.0" not in frontends(netns)


def test_an_invalid_service_keeps_its_rules_while_the_rest_is_applied(netns, tmp_path):
    directory = two_files(tmp_path)
    assert nftproxy("apply", str(directory), *NODE, "--netns", netns).returncode == 0
    # dns turns invalid, web moves to another endpoint: web changes, dns stays.
    two_files(tmp_path, web_ip="10.244.1.6", dns_port="eighty")
    out = nftproxy("apply", str(directory), *NODE, "--netns", netns)
    assert out.returncode == 3, out.stderr
    assert "Service kube-system/dns" in out.stderr and "spec.ports[0].port" in out.stderr
    assert "dns.yaml" in out.stderr and "kept" in out.stderr
    endpoints = nft_in(netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-udp")
    assert "10.96.0.53 . 53 . 0 : 10.244.1.53 . 53" in endpoints
    assert "10.96.0.53 . udp . 53" in frontends(netns)
    web = nft_in(netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
    assert "10.244.1.6" in web and "10.244.1.5" not in web
    again = nftproxy("plan", str(directory), *NODE, "--netns", netns)
    assert again.returncode == 3 and again.stdout.startswith("# noop"), again.stdout
    pruned = nftproxy("apply", str(directory), *NODE, "--netns", netns, "--prune")
    assert pruned.returncode == 3
    assert "10.96.0.53" not in frontends(netns)


def test_a_deleted_file_still_deletes_its_services(netns, tmp_path):
    directory = two_files(tmp_path)
    assert nftproxy("apply", str(directory), *NODE, "--netns", netns).returncode == 0
    (directory / "dns.yaml").unlink()
    out = nftproxy("apply", str(directory), *NODE, "--netns", netns)
    assert out.returncode == 0, out.stderr
    assert "10.96.0.53" not in frontends(netns) and "10.96.0.10" in frontends(netns)


def test_a_rejected_slice_keeps_its_services_endpoints_unless_pruned(netns, tmp_path):
    directory = two_files(tmp_path)
    assert nftproxy("apply", str(directory), *NODE, "--netns", netns).returncode == 0
    web = directory / "web.yaml"
    web.write_text(web.read_text().replace("addressType: IPv4", "addressType: IPv5"))
    out = nftproxy("apply", str(directory), *NODE, "--netns", netns)
    assert out.returncode == 3, out.stderr
    assert "EndpointSlice shop/web-1" in out.stderr and "addressType" in out.stderr
    assert "10.96.0.10 . tcp . 80 : goto g1-pick4-tcp-1" in frontends(netns)
    pruned = nftproxy("apply", str(directory), *NODE, "--netns", netns, "--prune")
    assert pruned.returncode == 3
    assert "10.96.0.10 . tcp . 80 : goto g1-reject" in frontends(netns)


def test_a_bad_address_loses_only_its_endpoint(netns, tmp_path):
    directory = two_files(tmp_path)
    web = directory / "web.yaml"
    web.write_text(
        web.read_text().replace(
            "endpoints: [{addresses: [10.244.1.5]}]",
            "endpoints: [{addresses: [10.244.1.5]}, {addresses: [10.244.1.999]}]",
        )
    )
    out = nftproxy("apply", str(directory), *NODE, "--netns", netns)
    assert out.returncode == 3, out.stderr
    assert "endpoints[1].addresses[0]" in out.stderr and "10.244.1.999" in out.stderr
    assert "10.96.0.10 . 80 . 0 : 10.244.1.5 . 8080" in nft_in(
        netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-tcp"
    )


def test_a_file_over_the_size_limit_is_an_error_naming_the_limit(tmp_path):
    directory = two_files(tmp_path)
    out = nftproxy("compile", str(directory), *NODE, "--max-file-size", "100")
    assert out.returncode == 1 and out.stdout == ""
    assert "dns.yaml" in out.stderr and "limit" in out.stderr
    assert nftproxy("compile", str(directory), *NODE, "--max-file-size", "64K").returncode == 0


def test_a_document_without_a_kind_is_an_invalid_object_not_an_unreadable_file(netns, tmp_path):
    directory = two_files(tmp_path)
    (directory / "odd.yaml").write_text("metadata: {name: nameless}\n---\n- a list\n")
    out = nftproxy("apply", str(directory), *NODE, "--netns", netns)
    assert out.returncode == 3, out.stderr
    assert "odd.yaml: document 1: kind is missing" in out.stderr
    assert "odd.yaml: document 2: expected a mapping" in out.stderr
    assert "10.96.0.53 . udp . 53" in frontends(netns)


def test_service_cidrs_from_objects_or_the_flag_drop_unallocated_addresses(tmp_path):
    cidrs = tmp_path / "servicecidrs.yaml"
    cidrs.write_text(
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\n"
        "spec: {cidrs: [10.96.0.0/16]}\n"
    )
    to = ["--to", "10.96.0.77:80/tcp", "--json"]
    for inputs in ([CLUSTER, str(cidrs)], [CLUSTER, "--service-cidr", "10.96.0.0/16"]):
        out = nftproxy("explain", *inputs, *NODE, *to)
        assert out.returncode == 0, out.stderr
        assert [r["verdict"] for r in json.loads(out.stdout)["results"]] == ["drop"]
    out = nftproxy("explain", CLUSTER, *NODE, *to)
    assert json.loads(out.stdout)["results"] == []  # no range known: routed as it is
    # A port the Service lacks is refused, range or not.
    out = nftproxy("explain", CLUSTER, *NODE, "--to", "10.96.0.10:81/tcp", "--json")
    assert [r["verdict"] for r in json.loads(out.stdout)["results"]] == ["reject"]


def test_explain_reads_addresses_with_leading_zeros_as_kube_proxy_flags_do():
    # Decimal whatever the zeros: 010.244.003.003 is 10.244.3.3, not octal 8.244.3.3.
    out = nftproxy(
        "explain",
        CLUSTER,
        *("--node-name", "node-a", "--node-ip", "192.168.000.001"),
        *("--cluster-cidr", "010.244.0.0/16", "--to", "10.096.000.010:80/tcp"),
        *("--from", "010.244.003.003"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("tcp 10.244.3.3 -> 10.96.0.10:80")
    assert "50.00%  dnat   10.244.1.5:8080" in out.stdout
    bad = nftproxy("explain", CLUSTER, "--to", "10.96.0.10:80", "--from", "10.244.3.256")
    assert bad.returncode == 1 and "--from: '10.244.3.256' is not an IP address" in bad.stderr


def test_explain_says_what_a_refused_or_dropped_packet_meets_and_why():
    out = nftproxy("explain", CLUSTER, *NODE, "--to", "10.96.0.10:81/tcp")
    assert "reject refused at once (TCP reset / ICMP port unreachable)" in out.stdout
    assert "via nat-prerouting -> services4 -> @cluster-ips4 -> reject" in out.stdout
    out = nftproxy(
        "explain", CLUSTER, *NODE, "--service-cidr", "10.96.0.0/16", "--to", "10.96.9.9:80"
    )
    assert "drop   dropped: no answer" in out.stdout
    assert "via nat-prerouting -> services4 -> @service-cidrs4" in out.stdout
