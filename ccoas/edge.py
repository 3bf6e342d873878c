"""A client of a running stack's edge, reached as a browser or an app reaches it.

Requests go to the stack's domain (Nginx answers no other name) on the port the engine
published for Nginx's HTTPS listener, and TLS is verified against the stack's certificate
(generated or supplied). Used by benchmarks and end-to-end tests that must go through the
real Nginx rather than around it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
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


# --- subscriptions, as a client makes them (the ``websockets`` package: ``pip install 'ccoas[test]'``) ---


async def graphql_subscribe(ws: Any, token: str, query: str) -> None:
    """Start ``query`` on an open graphql-transport-ws socket (PostGraphile), as ``token``'s user."""
    await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if ack.get("type") != "connection_ack":
        raise EngineError(f"GraphQL subscription refused: {ack}")
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
    await asyncio.sleep(0.5)  # PostGraphile issues its LISTEN when the subscription starts


async def directus_subscribe(ws: Any, token: str, collection: str, fields: list[str]) -> None:
    """Authenticate on an open Directus realtime socket and subscribe to ``collection``."""
    await ws.send(json.dumps({"type": "auth", "access_token": token}))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if answer.get("type") != "auth" or answer.get("status") != "ok":
        raise EngineError(f"Directus realtime refused the token: {answer}")
    await ws.send(json.dumps({"type": "subscribe", "collection": collection, "uid": collection, "query": {"fields": fields}}))
    init = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if init.get("type") != "subscription" or init.get("event") != "init":
        raise EngineError(f"Directus realtime subscription to {collection} refused: {init}")


async def next_event(ws: Any, timeout: float) -> dict[str, Any] | None:
    """The next message that is not a heartbeat (Directus's pings are answered), or ``None``
    after ``timeout`` seconds of silence."""
    while True:
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))
        except asyncio.TimeoutError:
            return None
        if message.get("type") == "ping":
            await ws.send(json.dumps({"type": "pong"}))
            continue
        return message


async def gather_events(ws: Any, received: list[tuple[float, dict[str, Any]]], stop: asyncio.Event) -> None:
    """Append every event with its arrival time (``time.monotonic()``) until ``stop`` is set."""
    while not stop.is_set():
        message = await next_event(ws, 0.2)
        if message is not None:
            received.append((time.monotonic(), message))
