"""A client of a running stack's edge, reached as a browser or an app reaches it.

Requests go to the stack's domain (Nginx answers no other name) on the port the engine
published for Nginx's HTTPS listener, and TLS is verified against the stack's certificate
(generated or supplied). Used by benchmarks and end-to-end tests that must go through the
real Nginx rather than around it.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ccoas.errors import EngineError


@dataclass(frozen=True)
class Edge:
    origin: str
    """``https://<domain>:<published port>``."""
    context: ssl.SSLContext

    @classmethod
    def of(cls, engine: Any) -> "Edge":
        """The edge of ``engine``'s running stack (a :class:`ccoas.engine.local.LocalEngine`)."""
        rows = {row.service: row for row in engine.status(probe=False)}  # endpoints only: no health checks run
        published = [e for e in (rows["nginx"].endpoints if "nginx" in rows else ()) if e.startswith("https://")]
        if not published:
            raise EngineError(f"stack {engine.plan.stack}: nginx publishes no HTTPS port (is it running?)")
        port = urlsplit(published[0]).port
        context = ssl.create_default_context(cafile=str(engine.paths.secret_file("nginx", "nginx_tls_cert")))
        return cls(f"https://{engine.plan.domain}:{port}", context)

    def request(self, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 30) -> tuple[int, Any]:
        """``(status, JSON body or None)``; an HTTP error status is returned, not raised."""
        request = urllib.request.Request(
            self.origin + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
                text = response.read().decode()
                return response.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            return error.code, (json.loads(text) if text.startswith(("{", "[")) else text or None)

    def websocket_url(self, path: str) -> str:
        return "wss://" + self.origin.removeprefix("https://") + path
