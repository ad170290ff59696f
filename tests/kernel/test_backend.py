"""open_backend and the Backend protocol (nftproxy.kernel.backend): every backend class has
every method of the protocol, callable the way the protocol says (checked here at run time:
mypy checks src, where FakeBackend is never used as a Backend)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from nftproxy.kernel.backend import Backend, open_backend
from nftproxy.kernel.errors import NftError
from nftproxy.kernel.fake import FakeBackend
from nftproxy.kernel.libnftables import LibNftables
from nftproxy.kernel.nftbinary import NftBinary

BACKENDS = (LibNftables, NftBinary, FakeBackend)
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
EMPTY = inspect.Parameter.empty


def protocol_methods() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(Backend).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def incompatible(want: inspect.Signature, got: inspect.Signature) -> list[str]:
    """How a method with signature `got` fails to accept every call `want` allows."""
    out = []
    wanted, given = list(want.parameters.values()), list(got.parameters.values())
    by_name = {p.name: p for p in given}
    var_args = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in given)
    var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in given)
    w_pos = [p for p in wanted if p.kind in POSITIONAL]
    g_pos = [p for p in given if p.kind in POSITIONAL]
    for i, p in enumerate(w_pos):
        if i >= len(g_pos):
            if not var_args:
                out.append(f"takes no parameter {p.name!r}")
            continue
        q = g_pos[i]
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and (
            q.name != p.name or q.kind is inspect.Parameter.POSITIONAL_ONLY
        ):
            out.append(f"parameter {i} is {q.name!r}, not {p.name!r}")
        if p.default is not EMPTY and q.default is EMPTY:
            out.append(f"{q.name!r} has no default")
    for p in wanted:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        q = by_name.get(p.name)
        if q is None or q.kind not in (p.kind, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            if not var_kwargs:
                out.append(f"takes no keyword {p.name!r}")
        elif p.default is not EMPTY and q.default is EMPTY:
            out.append(f"{q.name!r} has no default")
    names = {p.name for p in wanted}
    for q in given:
        if q.default is not EMPTY or q.kind not in (*POSITIONAL, inspect.Parameter.KEYWORD_ONLY):
            continue
        if (q.kind in POSITIONAL and g_pos.index(q) < len(w_pos)) or q.name in names:
            continue
        out.append(f"requires {q.name!r}, which callers of the protocol never pass")
    return out


def test_the_protocol_is_what_the_daemon_asks_of_nftables():
    assert set(protocol_methods()) == {
        "run",
        "check",
        "apply",
        "batches",
        "list_table",
        "list_set",
        "objects",
        "set_elements",
        "dump_sets",
        "generation",
        "monitor",
        "forget_caches",
        "close",
    }


@pytest.mark.parametrize("cls", BACKENDS, ids=lambda cls: cls.__name__)
def test_every_backend_has_every_protocol_method_with_a_compatible_signature(cls: type) -> None:
    problems = []
    for name, want in protocol_methods().items():
        method = inspect.getattr_static(cls, name, None)
        if not inspect.isfunction(method):
            problems.append(f"{name}: missing")
            continue
        problems += [f"{name}: {p}" for p in incompatible(want, inspect.signature(method))]
    assert problems == []


class Drifted:
    def run(self, text: str) -> None: ...  # renamed parameter
    def apply(self, tx: Any, sets: Any, generation: int | None = None) -> bool: ...  # no `*`
    def list_set(self, name: str, is_map: bool, *, extra: int) -> None: ...
    def check(self, script: str, *, strict: bool = False) -> None: ...  # fine: has a default


def test_the_signature_check_finds_drift():
    methods = protocol_methods()

    def problems(name: str) -> list[str]:
        return incompatible(methods[name], inspect.signature(getattr(Drifted, name)))

    assert problems("run") == ["parameter 1 is 'text', not 'script'"]
    assert problems("apply") == []  # keyword-only `generation` may be positional-or-keyword
    assert problems("list_set") == ["requires 'extra', which callers of the protocol never pass"]
    assert problems("check") == []
    assert incompatible(methods["close"], inspect.signature(lambda: None)) == [
        "takes no parameter 'self'"
    ]


@pytest.mark.kernel
def test_opening_a_missing_namespace_is_a_clear_error():
    with pytest.raises(NftError, match="does not exist"):
        open_backend("nftproxy-no-such-namespace")
