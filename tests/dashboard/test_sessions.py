"""Signed-in users held in memory (nftproxy.dashboard.app.Sessions): pure logic, on a
clock the test moves."""

from __future__ import annotations

from nftproxy.dashboard.app import Sessions, streamer
from nftproxy.dashboard.helm import Credentials


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_token_signing_in_again_and_again_pushes_out_only_its_own_sessions() -> None:
    clock, gone = Clock(), []
    sessions = Sessions(60, 3600, limit=20, per_user=3, clock=clock, on_remove=gone.append)
    other = sessions.new(Credentials("someone-else"), "bob")
    mallory = Credentials("mallory")
    made = []
    for _ in range(50):
        clock.now += 1
        made.append(sessions.new(mallory, "mallory"))
    assert sessions.get(other.id) is not None  # never pushed out by her
    alive = [s for s in made if sessions.get(s.id) is not None]
    assert alive == made[-3:]
    assert len(gone) == 47 and set(gone) == {mallory}  # her kept connections went each time


def test_a_live_page_does_not_keep_a_session_from_going_idle() -> None:
    clock = Clock()
    sessions = Sessions(60, 3600, clock=clock)
    session = sessions.new(Credentials("t"), "alice")
    for _ in range(40):  # a stream looks every 2 s for 80 s
        clock.now += 2
        assert sessions.peek(session.id) is not None or clock.now - 1000 > 60
    assert sessions.peek(session.id) is None
    assert sessions.get(session.id) is None


def test_live_streams_count_a_namespaces_service_accounts_as_one() -> None:
    """Whoever may create service accounts' tokens in a namespace holds them all: minting
    more does not buy more streams."""
    assert streamer("system:serviceaccount:team-a:alice") == "system:serviceaccount:team-a"
    assert streamer("system:serviceaccount:team-a:minted-7") == "system:serviceaccount:team-a"
    assert streamer("system:serviceaccount:team-b:alice") == "system:serviceaccount:team-b"
    assert streamer("alice@example.org") == "alice@example.org"
    assert streamer("system:serviceaccount:odd") == "system:serviceaccount:odd"
