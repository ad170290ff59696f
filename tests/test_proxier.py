"""The sync loop against a real kernel (and one named fake to stage a refused commit)."""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from pathlib import Path

import pytest

from nftproxy import applying
from nftproxy.kernel.backend import open_backend
from nftproxy.kernel.errors import NftError
from nftproxy.kernel.fake import FakeBackend
from nftproxy.proxier import Proxier, SyncLimiter
from nftproxy.ruleset.compile import Names
from nftproxy.ruleset.diff import AppliedState
from tests.support.builders import NODE, build, endpoints, ep, port, service
from tests.support.daemon import run_args
from tests.support.kernel import nft_in

WEB = service("web", ports=[port(80, node_port=30080)])


def slices_of(*ips: str):
    sl = endpoints("web", [ep(ip) for ip in ips])
    return {(sl.namespace, sl.name): sl}


def test_a_slice_update_becomes_a_small_partial_sync_equal_to_a_fresh_build(netns):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1", "10.244.1.2"))
    first = proxier.sync()
    assert first.mode == "generation"
    new = slices_of("10.244.1.1", "10.244.1.3")
    proxier.replace_all({WEB.id: WEB}, new)
    second = proxier.sync()
    assert second.mode == "incremental"
    assert 0 < second.changes < 12
    expected = build([WEB], new.values(), names=Names("g1-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)
    assert proxier.stats.partial_syncs == 1 and proxier.stats.full_syncs == 1


def test_new_node_addresses_sync_only_the_node_port_addresses(netns):
    node = dataclasses.replace(NODE, nodeport_addresses=("192.168.0.0/16",))
    backend = open_backend(netns)
    proxier = Proxier(backend, node)
    slices = slices_of("10.244.1.1")
    proxier.replace_all({WEB.id: WEB}, slices)
    assert proxier.sync().mode == "generation"
    proxier.update_node(interface_ips=("127.0.0.1", "192.168.0.1", "192.168.5.5", "10.0.0.1"))
    second = proxier.sync()
    assert (second.mode, second.changes) == ("incremental", 1)
    expected = build([WEB], slices.values(), node=proxier.node, names=Names("g1-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)
    assert set(expected.elements["g1-nodeport-ips4"]) == {("192.168.0.1",), ("192.168.5.5",)}
    # The zone changes what Services compile to: everything again.
    proxier.update_node(zone="zone-9")
    assert proxier.sync().mode != "incremental"
    assert proxier.stats.full_syncs == 2 and proxier.stats.partial_syncs == 1


def test_source_ranges_changed_to_overlapping_ones_sync_incrementally_and_verify(netns):
    """Partial syncs diff against the desired state's own record, never the kernel's
    listing: an overlapping replacement must still go in one commit the kernel accepts,
    and a comparison must find the kernel holding what was written."""
    node = dataclasses.replace(NODE, nodeport_addresses=("192.168.0.2/32",))
    backend = open_backend(netns)
    proxier = Proxier(backend, node)
    slices = slices_of("10.244.1.1")

    def web(*ranges: str):
        return service(
            "web",
            ports=[port(80, node_port=30080)],
            load_balancer_ips=("198.51.100.10", "2001:db8:1::10"),
            load_balancer_source_ranges=ranges,
        )

    proxier.replace_all({WEB.id: web("10.0.0.0/8")}, slices)
    assert proxier.sync().mode == "generation"
    for ranges in [
        ("10.0.0.0/16",),
        ("10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"),
        ("203.0.113.7/32", "2001:db8::7/128"),
        ("203.0.113.0/24",),
        (),
        ("0.0.0.0/0", "::/0"),
    ]:
        proxier.update_service(WEB.id, web(*ranges))
        assert proxier.sync().mode == "incremental"
        expected = build([web(*ranges)], slices.values(), node=node, names=Names("g1-"))
        assert applying.read_applied(backend) == AppliedState.of(expected)
        assert proxier.repair().mode == "noop"
    assert proxier.stats.full_syncs == 1 and proxier.stats.external_changes == 0


def test_a_relist_of_one_kind_keeps_the_other_and_applies_what_went_away(netns):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    api = service("api", ports=[port(81)])
    web_a = endpoints("web", [ep("10.244.1.1")], slice_name="web-a")
    web_b = endpoints("web", [ep("10.244.1.2")], slice_name="web-b")
    api_a = endpoints("api", [ep("10.244.2.1")], slice_name="api-a")
    slices = {(s.namespace, s.name): s for s in (web_a, web_b, api_a)}
    proxier.replace_all({WEB.id: WEB, api.id: api}, slices)
    proxier.sync()
    # A Service re-list that no longer has `api`: its rules go, every slice stays.
    proxier.replace_services({WEB.id: WEB})
    assert proxier.sync().mode == "incremental"
    expected = build([WEB], [web_a, web_b, api_a], names=Names("g1-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)
    # A slice re-list without web-b: web keeps the endpoint of web-a only.
    proxier.replace_slices({(web_a.namespace, web_a.name): web_a})
    assert proxier.sync().mode == "incremental"
    expected = build([WEB], [web_a], names=Names("g1-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)
    assert [sl.name for sl in proxier.slices_of(WEB.id)] == ["web-a"]


def test_a_change_too_big_for_one_transaction_builds_a_generation_without_the_old_state(
    netns, monkeypatch
):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1"))
    proxier.sync()
    old = weakref.ref(proxier._desired)
    old_gone_while_compiling: list[bool] = []
    compile_one = proxier._compile

    def watching(*args):
        old_gone_while_compiling.append(old() is None)
        return compile_one(*args)

    monkeypatch.setattr(proxier, "_compile", watching)
    monkeypatch.setattr(applying, "MAX_INCREMENTAL", 3)
    many = slices_of(*(f"10.244.2.{i}" for i in range(1, 9)))
    proxier.replace_all({WEB.id: WEB}, many)
    assert proxier.sync().mode == "generation"
    # First the partial sync compiles into the old state; the build that replaces it runs
    # after the old state is gone (holding both would double the daemon's peak).
    assert old_gone_while_compiling == [False, True]
    expected = build([WEB], many.values(), names=Names("g2-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)


def test_an_address_in_two_slices_gets_the_same_rules_running_as_after_a_restart(netns):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    local = service("web", ports=[port(80, node_port=30080)], external_policy_local=True)
    a = endpoints("web", [ep("10.244.1.1", "node-a")], slice_name="web-a")
    b = endpoints(
        "web", [ep("10.244.1.1", "node-b"), ep("10.244.2.2", "node-b")], slice_name="web-b"
    )
    proxier.replace_all({local.id: local}, {("default", "web-a"): a, ("default", "web-b"): b})
    proxier.sync()
    # web-a changes and arrives after web-b: the copy of 10.244.1.1 that counts must not
    # depend on that (a restart lists the slices in another order).
    a2 = endpoints(
        "web", [ep("10.244.1.1", "node-a"), ep("10.244.1.3", "node-a")], slice_name="web-a"
    )
    proxier.update_slice(("default", "web-a"), a2)
    proxier.sync()
    # The apiserver lists slices by name: what a restarted daemon would build.
    expected = build([local], [a2, b], names=Names("g1-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)


def test_nothing_changed_means_no_transaction(netns):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1"))
    proxier.sync()
    gen = backend.generation()
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1"))
    assert proxier.sync().mode == "noop"
    assert backend.generation() == gen


def test_a_table_changed_by_someone_else_is_detected_and_repaired_in_place(netns):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1", "10.244.1.2"))
    proxier.sync()
    expected = AppliedState.of(
        build([WEB], slices_of("10.244.1.1", "10.244.1.2").values(), names=Names("g1-"))
    )
    assert not proxier.kernel_changed_by_others()
    assert proxier.repair().mode == "noop"
    # Elements removed, changed and added behind our back, in every kind of set.
    nft_in(netns, "flush", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
    nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-nodeports4", "{ tcp . 30080 }")
    nft_in(netns, "add", "element", "inet", "nftproxy", "g1-nodeports4",
           "{ tcp . 30999 : goto g1-reject }")  # fmt: skip
    nft_in(netns, "add", "element", "inet", "nftproxy", "g1-hairpin4",
           "{ 10.9.9.9 . 10.9.9.9 }")  # fmt: skip
    nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-frontends4",
           "{ 10.96.0.10 . tcp . 80 }")  # fmt: skip
    nft_in(netns, "add", "element", "inet", "nftproxy", "g1-frontends4",
           "{ 10.96.0.10 . tcp . 80 : goto g1-reject }")  # fmt: skip
    assert proxier.kernel_changed_by_others()
    repaired = proxier.repair()
    assert repaired.mode == "incremental" and repaired.changes > 0
    # Repaired in place: same generation, element for element what was meant.
    assert applying.read_applied(backend) == expected
    assert not proxier.kernel_changed_by_others()
    assert proxier.repair().mode == "noop"
    assert proxier.stats.external_changes == 1
    # A foreign rule in our chains cannot be mended by elements: a new generation is built.
    nft_in(netns, "add", "rule", "inet", "nftproxy", "g1-services4", "counter")
    assert proxier.kernel_changed_by_others()
    assert proxier.repair().mode == "full"
    assert proxier.sync().mode == "generation"
    expected = build([WEB], slices_of("10.244.1.1", "10.244.1.2").values(), names=Names("g2-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)
    assert not proxier.kernel_changed_by_others()


def test_a_commit_of_someone_else_between_two_of_ours_is_noticed(netns):
    backend = open_backend(netns)
    proxier = Proxier(backend, NODE)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1"))
    proxier.sync()
    nft_in(netns, "delete", "element", "inet", "nftproxy", "g1-masq-nodeports4", "{ tcp . 30080 }")
    # Our next sync moves the generation too: what it moved by tells that it was not alone.
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1", "10.244.1.3"))
    assert proxier.sync().mode == "incremental"
    assert proxier.kernel_changed_by_others()
    assert proxier.repair().mode == "incremental"
    expected = build([WEB], slices_of("10.244.1.1", "10.244.1.3").values(), names=Names("g1-"))
    assert applying.read_applied(backend) == AppliedState.of(expected)


class FlakyBackend:
    """A fake that refuses the next commits: the kernel cannot be made to fail on demand.
    Everything else goes to the real backend."""

    def __init__(self, real):
        self.real = real
        self.refuse = 0

    def _refused(self) -> bool:
        if self.refuse:
            self.refuse -= 1
            return True
        return False

    def run(self, script: str) -> None:
        if self._refused():
            raise NftError("Error: Could not process rule: Cannot allocate memory")
        self.real.run(script)

    def apply(self, tx, sets, *, generation=None) -> bool:
        if self._refused():
            raise NftError("Error: Could not process rule: Cannot allocate memory")
        return self.real.apply(tx, sets, generation=generation)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_failed_sync_retries_as_a_full_sync_that_converges(netns):
    backend = FlakyBackend(open_backend(netns))
    proxier = Proxier(backend, NODE, min_sync_period=0.0)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1"))
    proxier.sync()
    backend.refuse = 1
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.9"))
    with pytest.raises(NftError):
        proxier.sync()
    assert proxier.stats.failures == 1
    result = proxier.sync()
    assert result.mode in ("incremental", "generation")
    expected = build([WEB], slices_of("10.244.1.9").values(), names=Names("g1-"))
    assert applying.read_applied(backend.real) == AppliedState.of(expected)


def test_the_loop_batches_a_burst_of_changes_into_few_syncs(netns):
    proxier = Proxier(open_backend(netns), NODE, min_sync_period=0.5)
    stop = threading.Event()
    loop = threading.Thread(target=proxier.run, args=(stop,), kwargs={"tick": 0.05})
    loop.start()
    try:
        for i in range(20):
            proxier.replace_all({WEB.id: WEB}, slices_of(f"10.244.1.{i + 1}"))
            time.sleep(0.02)
        key = ("10.96.0.10", 80, 0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            applied = applying.read_applied(proxier.backend)
            current = applied.elements.get("g1-endpoints4-tcp", {}).get(key) if applied else None
            if current == ("10.244.1.20", 8080):
                break
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join()
    assert current == ("10.244.1.20", 8080)
    assert proxier.stats.syncs <= 4


def test_the_limiter_lets_a_burst_through_then_one_sync_per_min_interval():
    limiter = SyncLimiter(1.0, burst=2)
    t = 100.0
    for _ in range(2):  # after a quiet spell: two syncs at once, as kube-proxy
        assert limiter.ready_at(t) == t
        limiter.take(t)
    assert limiter.ready_at(t) == pytest.approx(t + 1.0)
    t += 1.0
    limiter.take(t)
    assert limiter.ready_at(t + 0.25) == pytest.approx(t + 1.0)
    # A long pause refills the bucket, but never beyond the burst.
    t += 60.0
    limiter.take(t)
    limiter.take(t)
    assert limiter.ready_at(t) == pytest.approx(t + 1.0)


def test_the_limiter_without_a_min_interval_never_waits():
    limiter = SyncLimiter(0.0, burst=1)
    for i in range(5):
        assert limiter.ready_at(float(i)) == float(i)
        limiter.take(float(i))


def test_a_burst_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        SyncLimiter(1.0, burst=0)


MANIFEST = Path(__file__).parent / "data" / "cluster.yaml"


def test_the_daemon_follows_a_directory_and_leaves_rules_in_place_on_sigterm(
    netns, tmp_path, start_daemon
):
    (tmp_path / "cluster.yaml").write_text(MANIFEST.read_text())
    daemon = start_daemon(*run_args(netns, [tmp_path], node=["--node-ip", "192.168.0.1"]))

    def endpoints_now() -> str:
        try:
            return nft_in(netns, "list", "map", "inet", "nftproxy", "g1-endpoints4-tcp")
        except AssertionError:
            return ""

    daemon.wait_until(lambda: "10.244.2.7" in endpoints_now(), "the first sync")
    text = MANIFEST.read_text().replace("10.244.2.7", "10.244.2.99")
    (tmp_path / "cluster.yaml").write_text(text)
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    daemon.wait_until(
        lambda: "10.244.2.99" in endpoints_now() and "10.244.2.7" not in endpoints_now(),
        "the change",
    )
    assert daemon.stop() == 0, daemon.log
    assert "broken.yaml" in daemon.log and "SIGTERM" in daemon.log
    assert "10.244.2.99" in endpoints_now()


def test_udp_endpoints_that_went_away_are_named_for_conntrack_cleanup():
    from nftproxy.conntrack import Stale
    from nftproxy.proxier import stale_udp_endpoints
    from nftproxy.ruleset.desired import DesiredState

    dns = service(
        "dns",
        cluster_ips=("10.96.0.53",),
        ports=[port(53, name="dns", proto="udp", node_port=30053)],
    )
    names = Names()
    desired = DesiredState(NODE, names)

    def put(*ips: str) -> None:
        sl = endpoints("dns", [ep(ip) for ip in ips], name="dns", proto="udp", target=53)
        from nftproxy.ruleset.compile import compile_service

        desired.set_service(dns.id, compile_service(dns, [sl], NODE, names))

    put("10.244.1.1", "10.244.1.2", "10.244.1.3")
    desired.take_changes()
    put("10.244.1.1", "10.244.1.3")  # .2 goes away; .3 moves from bucket 2 to bucket 1
    stale = stale_udp_endpoints(desired.take_changes(), desired.ruleset)
    assert sorted(stale, key=repr) == sorted(
        [Stale("10.96.0.53", 53, "10.244.1.2", 53), Stale(None, 30053, "10.244.1.2", 53)],
        key=repr,
    )


@pytest.mark.parametrize(
    ("prefix", "policy"), [("g1-", "Cluster"), ("g7-", "Cluster"), ("g3-", "Local")]
)
def test_udp_frontends_that_gain_endpoints_are_named_for_their_un_nated_entries(
    prefix: str, policy: str
) -> None:
    from nftproxy.conntrack import Stale
    from nftproxy.proxier import stale_udp_endpoints, udp_frontend_flows
    from nftproxy.ruleset.compile import compile_service
    from nftproxy.ruleset.desired import DesiredState

    dns = service(
        "dns",
        cluster_ips=("10.96.0.53",),
        ports=[port(53, name="dns", proto="udp", node_port=30053)],
        external_policy_local=policy == "Local",
    )
    names = Names(prefix)
    desired = DesiredState(NODE, names)

    def put(*ips: str) -> list[Stale]:
        sl = endpoints("dns", [ep(ip) for ip in ips], name="dns", proto="udp", target=53)
        desired.set_service(dns.id, compile_service(dns, [sl], NODE, names))
        return sorted(stale_udp_endpoints(desired.take_changes(), desired.ruleset), key=repr)

    unnated = sorted(
        [Stale("10.96.0.53", 53, None), Stale(None, 30053, None, nodeport_family=4)], key=repr
    )
    assert put() == []  # no endpoints: packets are rejected, no entry forms
    assert put("10.244.1.1") == unnated
    assert put("10.244.1.1", "10.244.1.2") == []  # had endpoints already
    # A full sync knows only what each frontend has now: anything else answering it goes.
    now = frozenset({("10.244.1.1", 53), ("10.244.1.2", 53)})
    assert sorted(udp_frontend_flows(desired.ruleset), key=repr) == sorted(
        [
            Stale("10.96.0.53", 53, None, keep=now),
            Stale(None, 30053, None, nodeport_family=4, keep=now),
        ],
        key=repr,
    )


def test_the_sync_loop_runs_on_the_fake_kernel_and_a_restart_trusts_its_record(caplog):
    # The fake implements the whole Backend: generation builds, partial syncs, the record
    # (a batch that checks the generation id) and the restart that reads it back.
    fake = FakeBackend()
    proxier = Proxier(fake, NODE)
    proxier.replace_all({WEB.id: WEB}, slices_of("10.244.1.1", "10.244.1.2"))
    assert proxier.sync().mode == "generation"
    new = slices_of("10.244.1.1", "10.244.1.3")
    proxier.replace_slices(new)
    assert proxier.sync().mode == "incremental"
    expected = AppliedState.of(build([WEB], new.values(), names=Names("g1-")))
    assert fake.state == expected
    written = fake.generation()

    restarted = Proxier(fake, NODE)
    restarted.replace_all({WEB.id: WEB}, new)
    with caplog.at_level("INFO", logger="nftproxy"):
        assert restarted.sync().mode == "noop"
    assert "the table's record matches the desired state" in caplog.messages
    assert fake.generation() == written  # nothing was committed
    assert fake.state == expected
