"""The command line as a user runs it: `python -m nftproxy ...` in a subprocess."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nftproxy import cli
from nftproxy.proxier import Proxier
from tests.support.kernel import nft_in
from tests.support.samples import frontends, two_files

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
    from nftproxy.kernel.backend import open_backend

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
    # ServiceCIDRs alone (`kubectl get servicecidrs -o yaml`) describe no Service either.
    (empty / "cidrs.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\n"
        "spec: {cidrs: [10.96.0.0/16]}\n"
    )
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


# --- what a kube-proxy user expects of the command ------------------------------------------


@pytest.mark.parametrize("where", [[], ["run"], ["compile"]])
def test_version_prints_the_installed_version(where):
    out = nftproxy(*where, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"nftproxy {importlib.metadata.version('nftproxy')}\n"


def skipped_reported(*args: str) -> bool:
    out = nftproxy("compile", str(DATA / "features.yaml"), *NODE, *args)
    assert out.returncode == 0, out.stderr
    return "skipped: " in out.stderr and "Service shop/headless" in out.stderr


@pytest.mark.parametrize(
    "args", [["--v=2"], ["--v", "3"], ["-v"], ["-v=2"], ["-v2"], ["-v", "2"], ["-vv"]]
)
def test_kube_proxy_verbosity_flags_are_accepted_and_2_lists_skipped_objects(args):
    assert skipped_reported(*args)


@pytest.mark.parametrize("args", [[], ["--v=1"], ["--v", "0"]])
def test_below_verbosity_2_skipped_objects_are_not_listed(args):
    assert not skipped_reported(*args)


def test_verbosity_is_accepted_before_the_subcommand_too():
    out = nftproxy("--v=2", "compile", str(DATA / "features.yaml"), *NODE)
    assert out.returncode == 0, out.stderr
    assert "skipped: " in out.stderr


def test_a_bad_verbosity_is_a_usage_error():
    out = nftproxy("compile", CLUSTER, "--v=loud")
    assert out.returncode == 2
    assert "'loud' is not a log level" in out.stderr


def subcommands() -> dict[str, argparse.ArgumentParser]:
    top = cli.parser()
    (choices,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": top, **choices.choices}


@pytest.mark.parametrize("command", list(subcommands()))
def test_every_option_of_every_command_says_what_it_does(command):
    p = subcommands()[command]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        assert action.help and action.help != argparse.SUPPRESS, (command, action.option_strings)


@pytest.mark.parametrize("command", ["", "run", "compile"])
def test_help_explains_how_verbosity_levels_map(command):
    out = nftproxy(*([command] if command else []), "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "0 (default) errors, warnings" in text and "2 also each partial sync" in text
    assert "4 and above also debugging" in text


def test_cleanup_offers_only_the_options_it_uses():
    dests = {a.dest for a in subcommands()["cleanup"]._actions}
    assert dests == {"help", "version", "netns", "backend", "v", "verbose"}
    out = nftproxy("cleanup", "--help")
    assert "--node-ip" not in out.stdout and "--chunk" not in out.stdout


def test_help_readme_and_daemon_agree_on_the_verify_period():
    default = inspect.signature(Proxier).parameters["verify_period"].default
    assert cli.parser().parse_args(["run"]).verify_period == default
    out = nftproxy("run", "--help")
    assert f"(default {default:g};" in " ".join(out.stdout.split())
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"`--verify-period` ({default:g} s)" in " ".join(readme.split())


def test_apply_says_the_generation_once(netns):
    applied = nftproxy("apply", CLUSTER, *NODE, "--netns", netns)
    assert applied.returncode == 0, applied.stderr
    assert applied.stderr.count("generation") == 1, applied.stderr
    assert applied.stderr.startswith("generation 1 built (")
    again = nftproxy("apply", CLUSTER, *NODE, "--netns", netns)
    assert again.stderr == "noop: generation 1 holds the desired state\n"


def varied_cluster(n: int) -> str:
    """`n` Services with a bit of everything that comes in sets: dual-stack, two protocols,
    node ports, external and load-balancer IPs, source ranges, affinity, Local policies,
    zone hints, terminating endpoints, several slices each."""
    docs = []
    for i in range(n):
        a, b = divmod(i, 250)
        name, kind, dual = f"svc{i}", ("ClusterIP", "NodePort", "LoadBalancer")[i % 3], i % 2 == 0
        v4, v6 = f"10.96.{a}.{b + 1}", f"fd00:96::{i + 1:x}"
        spec = [
            f"type: {kind}",
            f"clusterIP: {v4}",
            f"clusterIPs: [{v4}, '{v6}']" if dual else f"clusterIPs: [{v4}]",
            "ipFamilies: [IPv4, IPv6]" if dual else "ipFamilies: [IPv4]",
            f"ipFamilyPolicy: {'RequireDualStack' if dual else 'SingleStack'}",
        ]
        np = [f", nodePort: {30000 + 2 * i + k}" if kind != "ClusterIP" else "" for k in (0, 1)]
        spec.append(
            f"ports: [{{name: http, port: 80{np[0]}}}, {{name: dns, port: 53, protocol: UDP{np[1]}}}]"
        )
        if i % 5 == 0:
            spec.append(f"externalIPs: [192.0.{2 + a}.{b + 1}, 192.1.{2 + a}.{b + 1}]")
        if i % 4 == 1:
            spec.append("sessionAffinity: ClientIP")
        if i % 7 == 2:
            spec.append("trafficDistribution: PreferClose")
        if i % 6 == 3:
            spec.append("internalTrafficPolicy: Local")
        status = ""
        if kind == "LoadBalancer":
            spec.append(f"loadBalancerSourceRanges: [203.0.113.0/24, 10.{i % 250}.0.0/16]")
            if i % 2:
                spec += ["externalTrafficPolicy: Local", f"healthCheckNodePort: {32100 + i}"]
            status = (
                f"status: {{loadBalancer: {{ingress: [{{ip: 198.51.{100 + a}.{b + 1}}}, "
                f"{{ip: 198.52.{100 + a}.{b + 1}}}]}}}}\n"
            )
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns{i % 7}}}\n"
            "spec:\n" + "".join(f"  {line}\n" for line in spec) + status
        )
        for family in ("IPv4", "IPv6") if dual else ("IPv4",):
            for part in range(2):
                endpoints = []
                for e in range(1 + (i + part) % 4):
                    ip = (
                        f"10.244.{i % 250}.{4 * part + e + 1}"
                        if family == "IPv4"
                        else f"'fd00:244::{i:x}:{4 * part + e + 1:x}'"
                    )
                    ready = (
                        "false, serving: true, terminating: true" if (i + e) % 9 == 0 else "true"
                    )
                    hints = (
                        f", hints: {{forZones: [{{name: zone-{e % 2 + 1}}}]}}" if i % 7 == 2 else ""
                    )
                    endpoints.append(
                        f"- {{addresses: [{ip}], nodeName: node-{'abc'[e % 3]}, zone: zone-{e % 2 + 1}, "
                        f"conditions: {{ready: {ready}}}{hints}}}\n"
                    )
                docs.append(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                    f"metadata: {{name: {name}-{family}-{part}, namespace: ns{i % 7}, "
                    f"labels: {{kubernetes.io/service-name: {name}}}}}\n"
                    f"addressType: {family}\n"
                    "ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\n"
                    "endpoints:\n" + "".join(endpoints)
                )
    return "---\n".join(docs)


FEATURES = [str(DATA / "features.yaml")]
DUAL_NODE = [
    *NODE,
    "--node-ip",
    "fd00:192::1",
    "--cluster-cidr",
    "fd00:244::/64",
    "--zone",
    "zone-1",
]


def test_compile_prints_the_same_bytes_whatever_the_hash_seed(tmp_path):
    cluster = tmp_path / "varied.yaml"
    cluster.write_text(varied_cluster(120))
    outputs = set()
    for seed in ("0", "1", "2", "3", "4"):
        out = subprocess.run(
            [sys.executable, "-m", "nftproxy", "compile", str(cluster), *FEATURES, *DUAL_NODE],
            capture_output=True,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert out.returncode == 0, out.stderr
        outputs.add((out.stdout, out.stderr))
    assert len(outputs) == 1


@pytest.mark.parametrize("command", ["compile", "plan"])
def test_output_into_a_pipe_closed_early_stops_quietly(tmp_path, netns, command):
    cluster = tmp_path / "big.yaml"
    cluster.write_text(varied_cluster(300))  # far more than a pipe holds
    # plan wrote its whole text in one call, which a closed pipe cut short silently.
    where = ["--netns", netns] if command == "plan" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "nftproxy", command, str(cluster), *DUAL_NODE, *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # what `| head -1` reads, then it exits
    proc.stdout.close()
    with proc.stderr:
        errors = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert first.startswith(b"add table inet nftproxy" if command == "compile" else b"# ")
    assert errors == ""


def test_a_dash_reads_the_manifests_from_standard_input():
    text = Path(CLUSTER).read_text()
    from_file = nftproxy("compile", CLUSTER, *NODE)
    for command in (["compile"], ["explain", "--to", "10.96.0.10:80/tcp"]):
        out = subprocess.run(
            [sys.executable, "-m", "nftproxy", *command, "-", *NODE],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        if command == ["compile"]:
            assert out.stdout == from_file.stdout
        else:
            assert "50.00%  dnat   10.244.1.5:8080" in out.stdout


def test_standard_input_is_bounded_like_a_file_and_json_works_too():
    def compile_stdin(text: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nftproxy", "compile", "-", *NODE, *args],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )

    as_json = compile_stdin(json.dumps(yaml.safe_load(Path(CLUSTER).read_text())))
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout == nftproxy("compile", CLUSTER, *NODE).stdout
    big = compile_stdin(Path(CLUSTER).read_text(), "--max-file-size", "100")
    assert big.returncode == 1 and big.stdout == ""
    assert "<stdin>: larger than the limit of 100 bytes per file" in big.stderr


def test_a_fifo_in_an_input_directory_is_skipped_with_a_warning_and_a_named_one_is_an_error(
    tmp_path,
):
    directory = two_files(tmp_path)
    fifo = directory / "pipe.yaml"
    os.mkfifo(fifo)
    out = nftproxy("compile", str(directory), *NODE)
    assert out.returncode == 0, out.stderr
    assert f"warning: {fifo}: is a FIFO (named pipe); only regular files are read; skipped" in (
        out.stderr
    )
    assert "10.96.0.53 . udp . 53" in out.stdout
    named = nftproxy("compile", str(fifo), *NODE)
    assert named.returncode == 1 and named.stdout == ""
    assert f"{fifo}: is a FIFO (named pipe)" in named.stderr


def test_a_service_defined_twice_is_rejected_naming_both_and_the_first_is_used(tmp_path):
    directory = two_files(tmp_path)
    moved = (directory / "web.yaml").read_text().replace("10.244.1.5", "10.244.1.99")
    other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes, namespace: shop}\n"
    (directory / "zz-copy.yaml").write_text(other + "---\n" + moved)
    out = nftproxy("compile", str(directory), *NODE)
    assert out.returncode == 3
    first, again = directory / "web.yaml", directory / "zz-copy.yaml"
    for kind, name, was, duplicate in (
        ("Service", "shop/web", 1, 2),
        ("EndpointSlice", "shop/web-1", 2, 3),
    ):
        assert (
            f"error: {again}: {kind} {name}: duplicate: document {duplicate} defines it again "
            f"after {first}: document {was}, which is used\n" in out.stderr
        ), out.stderr
    assert "10.244.1.5 . 8080" in out.stdout and "10.244.1.99" not in out.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--to", "192.168.0.1:30080/tcp", "--via", "nodeport"],
        ["--to", "192.168.0.1:30080/tcp"],
        ["--to", "192.168.0.1:31999/tcp", "--via", "nodeport"],
    ],
)
def test_explain_of_a_node_port_without_node_ip_names_the_missing_flag(args):
    out = nftproxy("explain", CLUSTER, *args)
    assert out.returncode == 1, out.stdout
    assert "--node-ip" in out.stderr and out.stdout == ""
    if "30080" in args[1]:
        assert "port 30080/tcp is the NodePort of shop/web" in out.stderr


def test_explain_of_other_addresses_needs_no_node_ip():
    out = nftproxy("explain", CLUSTER, "--to", "192.168.0.1:8080/tcp")
    assert out.returncode == 0
    assert "no match" in out.stdout
    lb = nftproxy("explain", CLUSTER, "--to", "198.51.100.10:80/tcp", "--via", "nodeport")
    assert lb.returncode == 0 and "50.00%" in lb.stdout


@functools.cache
def as_unprivileged() -> list[str]:
    """The command prefix that runs a program as nobody; where nobody cannot reach this
    interpreter, as root without any of root's capabilities (what the kernel checks)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", ""], capture_output=True, check=False)
    return (
        nobody if probe.returncode == 0 else ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    )


def unprivileged(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    inside = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*inside, *as_unprivileged(), sys.executable, "-m", "nftproxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["apply", CLUSTER, *NODE],
        ["plan", CLUSTER, *NODE],
        ["cleanup"],
        ["run", "--manifests", CLUSTER, "--healthz-bind-address=", "--metrics-bind-address="],
    ],
)
def test_without_root_a_command_says_in_one_line_what_needs_root(netns, args):
    out = unprivileged(*args, "--netns", netns)
    assert out.returncode == 1, out.stderr
    assert out.stderr == (
        f"nftproxy {args[0]}: needs root (CAP_SYS_ADMIN) to enter network namespace {netns}: "
        "Operation not permitted\n"
    )


def test_without_root_the_daemon_in_its_own_namespace_refuses_to_start(netns):
    out = unprivileged(
        "run",
        "--manifests",
        CLUSTER,
        "--healthz-bind-address=",
        "--metrics-bind-address=",
        netns=netns,
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr == (
        "nftproxy run: needs root (CAP_NET_ADMIN) to read or change nftables: "
        "Operation not permitted\n"
    )


def test_the_readme_explain_example_prints_what_the_readme_shows():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("```console\n", 1)[1].split("```", 1)[0]
    command, _, shown = block.partition("\n    ")
    rest, _, shown = shown.partition("\n")
    argv = (command.removeprefix("$ nftproxy ").rstrip(" \\") + " " + rest).split()
    out = subprocess.run(
        [sys.executable, "-m", "nftproxy", *argv],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown
