"""A directory of manifests as a source of cluster state (`nftproxy run --manifests`), polled
by mtime, size and inode so that replaced files and swapped ConfigMap symlinks are seen;
only changed files are parsed again. What it does with broken files and objects: README,
"The daemon on a manifest directory"."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nftproxy.logs import DETAIL
from nftproxy.model import EndpointSlice, Service, ServiceCIDR, ServiceName, SliceName
from nftproxy.sink import Sink
from nftproxy.sources.manifests import (
    DEFAULT_LIMITS,
    Manifests,
    ReadLimits,
    broken_symlink,
    load_paths,
    manifest_files,
    special_file,
)

__all__ = [
    "ManifestDirectory",
    "Signature",
]

log = logging.getLogger("nftproxy.manifests")

Signature = tuple[int, int, int]


@dataclass(slots=True)
class _FileState:
    signature: Signature
    services: dict[ServiceName, Service] = field(default_factory=dict)
    slices: dict[SliceName, EndpointSlice] = field(default_factory=dict)
    service_cidrs: dict[str, ServiceCIDR] = field(default_factory=dict)
    # Never read whole: what it holds is not known (see ManifestDirectory.incomplete).
    unknown: bool = False
    # Its slices rejected without a last good state, and their Services.
    incomplete: dict[SliceName, ServiceName] = field(default_factory=dict)


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


K = TypeVar("K", ServiceName, SliceName, str)
V = TypeVar("V", Service, EndpointSlice, ServiceCIDR)


# What each kind's objects are kept in, in a file's state.
_OBJECTS = {"Service": "services", "EndpointSlice": "slices", "ServiceCIDR": "service_cidrs"}


def _first_wins(
    into: dict[K, V],
    objects: Mapping[K, V],
    kind: str,
    path: Path,
    first: dict[tuple[str, object], Path],
) -> list[str]:
    """Add the objects of `path` that no other file claimed (`first` says which file
    defines what); the others are returned as duplicates, for the log."""
    duplicates: list[str] = []
    for key, obj in objects.items():
        where = first.setdefault((kind, key), path)
        if where == path:
            into[key] = obj
        else:
            label = str(key) if isinstance(key, str | ServiceName) else "/".join(key)
            duplicates.append(
                f"{path}: {kind} {label}: duplicate: defined again after {where}, which is used"
            )
    return duplicates


class ManifestDirectory:
    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        service_proxy_name: str | None = None,
        limits: ReadLimits = DEFAULT_LIMITS,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.service_proxy_name = service_proxy_name
        self.limits = limits
        self._files: dict[Path, _FileState] = {}
        self._broken: dict[Path, str] = {}  # symlinks that cannot be followed, as reported
        self._missing: set[Path] = set()  # roots that are gone, as reported
        self._special: set[str] = set()  # directory entries skipped, as reported
        self._duplicates: set[str] = set()  # objects defined in several files, as reported
        self._definers: dict[tuple[str, object], Path] = {}  # which file's definition is used
        self._service_cidrs: tuple[str, ...] = ()
        self.errors = 0

    def missing(self) -> list[Path]:
        """The paths given that do not exist (now)."""
        return [p for p in self.paths if not p.exists()]

    def _current_files(self, roots: Iterable[Path]) -> list[Path]:
        out: list[Path] = []
        special: set[str] = set()
        for p in roots:
            if p.is_dir():
                for file in manifest_files(p):
                    skipped = special_file(file)
                    if skipped is None:
                        out.append(file)
                    else:
                        special.add(skipped)
            elif p.exists() or p.is_symlink():
                out.append(p)
        for skipped in sorted(special - self._special):
            log.warning("%s", skipped)
        self._special = special
        return out

    def _note_missing_roots(self) -> set[Path]:
        missing = set(self.missing())
        for root in sorted(missing - self._missing):
            self.errors += 1
            log.error(
                "%s: no such file or directory (keeping its last good objects until it is back)",
                root,
            )
        for root in sorted(self._missing - missing):
            log.info("%s: back", root)
        self._missing = missing
        return missing

    @property
    def incomplete(self) -> bool:
        """Whether some input is not known: a file never read whole (it has not parsed
        since it appeared), or a slice rejected without a last good state. The rules of
        what such inputs describe must not be deleted meanwhile (see Proxier.keep)."""
        return any(state.unknown or state.incomplete for state in self._files.values())

    def scan(self) -> bool:
        """Re-read what changed; True when the merged state may differ.

        A given path that vanished (a directory renamed away, a volume remounting) is an
        input error, not a deletion: its files keep their last good objects until it is
        back. A file deleted from a directory that is there deletes its objects."""
        changed = False
        missing = self._note_missing_roots()
        present = self._current_files(p for p in self.paths if p not in missing)
        kept = {f for f in self._files if any(f == r or r in f.parents for r in missing)}
        for gone in self._files.keys() - set(present) - kept:
            log.info("%s: removed", gone)
            del self._files[gone]
            changed = True
        broken: dict[Path, str] = {}
        for path in present:
            sig = _signature(path)
            old = self._files.get(path)
            if sig is None:
                self._report_broken_symlink(path, broken)
                if old is None:
                    self._files[path] = _FileState((0, 0, 0), unknown=True)
                    changed = True
                continue
            if old is not None and old.signature == sig:
                continue
            self._files[path] = self._reload(path, sig, old)
            changed = True
        self._broken = broken
        return changed

    def _report_broken_symlink(self, path: Path, broken: dict[Path, str]) -> None:
        err = broken_symlink(path)
        if err is None:
            return  # gone since it was listed: the next scan sees it removed
        text = str(err)
        broken[path] = text
        if self._broken.get(path) == text:
            return  # reported by an earlier scan
        self.errors += 1
        kept = " (keeping this file's last good objects)" if path in self._files else " (skipped)"
        log.error("%s%s", text, kept)

    def _reload(self, path: Path, sig: Signature, old: _FileState | None) -> _FileState:
        loaded: Manifests = load_paths(
            [path], service_proxy_name=self.service_proxy_name, limits=self.limits
        )
        state = _FileState(
            sig, dict(loaded.services), dict(loaded.slices), dict(loaded.service_cidrs)
        )
        state.incomplete = dict(loaded.incomplete)
        for err in loaded.errors:
            self.errors += 1
            if old is None or old.unknown:
                if err.kind in ("file", "document"):
                    # Never read whole: what it describes stays as the table holds it.
                    state.unknown = True
                log.error("%s (skipped)", err)
                continue
            if err.kind in ("file", "document"):
                # A document nobody can name may be the broken version of any object here.
                log.error("%s (keeping this file's last good objects)", err)
                state.services = dict(old.services)
                state.slices = dict(old.slices)
                state.service_cidrs = dict(old.service_cidrs)
                state.incomplete = dict(old.incomplete)
                continue
            kept = False
            if err.kind == "Service":
                sid = ServiceName(err.namespace, err.name)
                if sid in old.services and sid not in state.services:
                    state.services[sid] = old.services[sid]
                    kept = True
            elif err.kind == "EndpointSlice":
                key = (err.namespace, err.name)
                if key in old.slices and key not in state.slices:
                    state.slices[key] = old.slices[key]
                    state.incomplete.pop(key, None)  # its last good endpoints are known
                    kept = True
            elif (
                err.kind == "ServiceCIDR"
                and err.name in old.service_cidrs
                and err.name not in state.service_cidrs
            ):
                state.service_cidrs[err.name] = old.service_cidrs[err.name]
                kept = True
            log.error("%s%s", err, " (keeping its last good state)" if kept else " (skipped)")
        cidrs = f", {len(state.service_cidrs)} ServiceCIDR(s)" if state.service_cidrs else ""
        log.log(
            DETAIL,
            "%s: %d service(s), %d endpoint slice(s)%s",
            path,
            len(state.services),
            len(state.slices),
            cidrs,
        )
        return state

    def merged(self) -> tuple[dict[ServiceName, Service], dict[SliceName, EndpointSlice]]:
        """Every Service and slice, the first file in sorted order winning where two define
        one (as the CLI reads them); without the Services some of whose slices are not
        known (so that their rules stay as the table holds them)."""
        services: dict[ServiceName, Service] = {}
        slices: dict[SliceName, EndpointSlice] = {}
        unsure: set[ServiceName] = set()
        # A file keeps what it defined while it still does: a file that defines it again
        # later is the duplicate, whatever its name, as the API would refuse a second
        # create. Otherwise the first file in sorted order wins, as in the CLI.
        first: dict[tuple[str, object], Path] = {}
        for (kind, key), path in self._definers.items():
            state = self._files.get(path)
            if state is not None and key in getattr(state, _OBJECTS[kind]):
                first[kind, key] = path
        duplicates: set[str] = set()
        cidrs: dict[str, ServiceCIDR] = {}
        for path in sorted(self._files):
            state = self._files[path]
            duplicates.update(_first_wins(services, state.services, "Service", path, first))
            duplicates.update(_first_wins(slices, state.slices, "EndpointSlice", path, first))
            duplicates.update(_first_wins(cidrs, state.service_cidrs, "ServiceCIDR", path, first))
            unsure.update(state.incomplete.values())
        self._service_cidrs = tuple(cidr for obj in cidrs.values() for cidr in obj.cidrs)
        for duplicate in sorted(duplicates - self._duplicates):
            self.errors += 1
            log.error("%s", duplicate)
        self._duplicates = duplicates
        self._definers = first
        for sid in unsure:
            services.pop(sid, None)
        return services, slices

    def service_cidrs(self) -> tuple[str, ...]:
        """The ranges of every ServiceCIDR object as of the last `merged` (which picks one
        definition of each, as for Services)."""
        return self._service_cidrs

    def feed(self, sink: Sink) -> None:
        """Hand what the files say to `sink`: the ServiceCIDR ranges, then every Service
        and slice (see merged), incomplete while some input is not known."""
        services, slices = self.merged()
        cidrs = self.service_cidrs()
        sink.replace_all(services, slices, complete=not self.incomplete, service_cidrs=cidrs)

    def files(self) -> Iterable[Path]:
        return sorted(self._files)
