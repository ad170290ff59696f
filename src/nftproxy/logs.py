"""kube-proxy's log verbosity (klog's ``--v``) mapped onto Python logging: 0 and 1 show
errors, warnings and INFO, 2 and 3 also DETAIL (each partial sync, each manifest read), 4
and above also DEBUG. `HELP` is the text `--help` shows."""

from __future__ import annotations

import logging
from typing import Final

__all__ = [
    "DETAIL",
    "HELP",
    "level",
    "setup",
]

# Between DEBUG (10) and INFO (20): shown from --v=2.
DETAIL: Final = 15
logging.addLevelName(DETAIL, "DETAIL")

# The text `--help` and the README show; keep it in step with `level`.
HELP: Final = (
    "log verbosity, as kube-proxy's --v: 0 (default) errors, warnings and what changes "
    "(startup, full syncs, inputs appearing or breaking); 2 also each partial sync and "
    "each file read; 4 and above also debugging"
)


def level(verbosity: int) -> int:
    """The logging level that shows what klog shows at `verbosity`."""
    if verbosity >= 4:
        return logging.DEBUG
    if verbosity >= 2:
        return DETAIL
    return logging.INFO


def setup(verbosity: int, *, timestamps: bool) -> None:
    """Log to stderr at `verbosity`; a daemon's lines carry the time."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(
        level=level(verbosity), format=f"%(asctime)s {fmt}" if timestamps else fmt, force=True
    )
