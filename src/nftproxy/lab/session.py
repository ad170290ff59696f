"""A held TCP connection to an `--echo-tcp` port of `nftproxy.lab.echo`.

The server greets with "NAME SOURCE_IP" and then echoes lines; a test keeps the
connection open across rule changes and checks that it still answers (`exchange`).
Get one from `Lab.open_session`, which creates the socket inside a lab namespace.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType

__all__ = [
    "EchoSession",
    "SessionError",
]


class SessionError(ConnectionError):
    """The held connection failed: closed, reset, timed out or answered wrongly."""


class EchoSession:
    def __init__(self, sock: socket.socket, timeout: float = 2.0) -> None:
        self._sock = sock
        self._buf = b""
        self.timeout = timeout
        self.greeting = self._read_line()

    @property
    def endpoint(self) -> str:
        """The server's name from the greeting."""
        return self.greeting.split(" ", 1)[0]

    @property
    def source(self) -> str:
        """The source address the server saw."""
        return self.greeting.split(" ", 1)[1] if " " in self.greeting else ""

    def _read_line(self) -> str:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionError(f"no line within {self.timeout}s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(4096)
            except TimeoutError:
                raise SessionError(f"no line within {self.timeout}s") from None
            except OSError as exc:
                raise SessionError(f"connection failed: {exc}") from exc
            if not chunk:
                raise SessionError("the server closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def exchange(self, text: str) -> str:
        """Send one line, return what came back (the same line if all is well)."""
        if "\n" in text:
            raise ValueError("one line at a time")
        try:
            self._sock.sendall(text.encode() + b"\n")
        except OSError as exc:
            raise SessionError(f"send failed: {exc}") from exc
        return self._read_line()

    def alive(self, text: str = "ping") -> bool:
        """Whether one exchange still round-trips unchanged."""
        try:
            return self.exchange(text) == text
        except SessionError:
            return False

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> EchoSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
