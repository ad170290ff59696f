"""A signed-in user of the app dashboard, driven over HTTP as a browser would: the sign-in
form, cookies kept, pages, forms and server-sent events. The dashboard may listen inside
another network namespace (a cluster's); each connection is then opened there."""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Generator

from nftproxy.kernel.netns import run_in_netns

__all__ = ["Browser"]


class Browser:
    """A signed-in user's HTTP session (cookies kept), enough for pages and streams."""

    def __init__(self, base: str, token: str, *, netns: str | None = None) -> None:
        self.base = base
        self.netns = netns
        self.cookies: dict[str, str] = {}
        form = self.get("/signin")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form[1])
        assert csrf is not None
        status, text = self.post("/signin", {"csrf": csrf[1], "token": token})
        assert status == 303, text
        assert "nftproxy_session" in self.cookies

    def _connection(self) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        # The socket belongs to the namespace it was made in, whichever thread uses it.
        run_in_netns(self.netns, conn.connect)
        return conn

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def _keep(self, answer: http.client.HTTPResponse) -> None:
        for header in answer.headers.get_all("set-cookie") or []:
            name, _, value = header.split(";")[0].partition("=")
            if value.strip('"'):
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)

    def get(self, path: str) -> tuple[int, str]:
        conn = self._connection()
        conn.request("GET", path, headers=self._headers())
        answer = conn.getresponse()
        text = answer.read().decode()
        self._keep(answer)
        conn.close()
        return answer.status, text

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        conn = self._connection()
        headers = self._headers() | {"Content-Type": "application/x-www-form-urlencoded"}
        conn.request("POST", path, body=urllib.parse.urlencode(form), headers=headers)
        answer = conn.getresponse()
        text = answer.read().decode()
        self._keep(answer)
        conn.close()
        return answer.status, text

    def events(self, path: str) -> Generator[str, None, None]:
        """The `update` events of a live part, as they come."""
        conn = self._connection()
        conn.request("GET", path, headers=self._headers() | {"Accept": "text/event-stream"})
        answer = conn.getresponse()
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        try:
            event, data = "", []
            for raw in answer:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and event:
                    if event == "update":
                        yield "\n".join(data)
                    event, data = "", []
        finally:
            conn.close()
