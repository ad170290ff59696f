"""What AppliedState remembers of the transactions the kernel accepted."""

from __future__ import annotations

from nftproxy.ruleset.compile import Names
from nftproxy.ruleset.diff import AppliedState, diff
from nftproxy.ruleset.transaction import AddElements, DeleteElements, Transaction
from tests.support.builders import build, endpoints, ep, service


def test_a_summary_without_elements_stays_without_them_while_recording_changes():
    names = Names()
    web = service("web", cluster_ips=("10.96.0.10",))
    before = build([web], [endpoints("web", [ep("10.244.1.1")])], names=names)
    after = build([web], [endpoints("web", [ep("10.244.1.2"), ep("10.244.1.3")])], names=names)
    change = diff(after, AppliedState.of(before))
    assert any(isinstance(op, AddElements) for op in change.ops)
    assert any(isinstance(op, DeleteElements) for op in change.ops)

    full, summary = AppliedState.of(before), AppliedState.of(before, elements=False)
    full.record(change)
    summary.record(change)
    # The complete state follows the kernel; the summary keeps names and rule counts only
    # (the daemon's, which partial syncs would otherwise fill with every element written).
    assert full == AppliedState.of(after)
    assert summary.elements == {} and summary.element_count() == 0
    assert (summary.sets, summary.chains) == (full.sets, full.chains)
    summary.record(Transaction(list(diff(before, AppliedState.of(after)).ops)))
    assert summary.elements == {}
