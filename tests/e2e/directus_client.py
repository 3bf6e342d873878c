"""Directus as its users reach it: REST through the stack's Nginx over TLS (:class:`ccoas.edge.Edge`),
and the people the end-to-end tests make there (app users in tenants of their own)."""

from __future__ import annotations

import uuid
from typing import Any

from ccoas.edge import Edge
from ccoas.engine.local import LocalEngine

APP_ROLE = "app-user"
"""The role ccoas provisions in Directus from the stack's presets."""


class Directus:
    """Directus's REST API through Nginx over TLS (the stack's edge), as a browser or app reaches it."""

    def __init__(self, engine: LocalEngine, edge: Edge | None = None):
        self.edge = edge or Edge.of(engine)
        self.origin, self.context = self.edge.origin, self.edge.context
        self.url = self.origin + "/directus"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        status, answer = self.edge.request(method, "/directus" + path, body, token)
        return status, (answer.get("data") if 200 <= status < 300 and isinstance(answer, dict) else answer or {})

    def ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, data = self.call(method, path, body, token)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    def login(self, email: str, password: str) -> str:
        return self.ok("POST", "/auth/login", {"email": email, "password": password})["access_token"]

    def admin_token(self, engine: LocalEngine) -> str:
        """The admin's access token (its password from the secret file ccoas wrote)."""
        return self.login("admin@example.com", engine.paths.secret_file("directus", "directus_admin_password").read_text())

    def app_users(self, admin: str, *names: str) -> dict[str, dict[str, str]]:
        """Users ``names`` with the app role, each in a tenant of its own, created by the admin
        and logged in: ``{name: {email, password, tenant, id, token}}``."""
        [role] = self.ok("GET", f"/roles?filter[name][_eq]={APP_ROLE}", token=admin)
        people = {}
        for name in names:
            person = {"email": f"{name}-{uuid.uuid4().hex[:6]}@example.com", "password": uuid.uuid4().hex, "tenant": str(uuid.uuid4())}
            created = self.ok("POST", "/users", {"email": person["email"], "password": person["password"], "role": role["id"], "tenant_id": person["tenant"]}, token=admin)
            person["id"] = created["id"]
            person["token"] = self.login(person["email"], person["password"])
            people[name] = person
        return people
