"""Diagnose, with no host: the scrubber and the postmortem skeleton (the e2e tier runs it on a
stack with an unhealthy service)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from urllib.parse import quote

import pytest

from ccoas.diagnose import Scrubber, postmortem


def test_scrubber_replaces_values_longest_first_and_pem_lines():
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    scrub = Scrubber({"pw": "s3cretValue", "url": "redis://d:s3cretValue@redis", "key": pem, "tiny": "abc"})
    text = scrub("conn redis://d:s3cretValue@redis and s3cretValue; key line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC; abc")
    assert "s3cretValue" not in text and "MIIEvQ" not in text
    assert "[scrubbed:url]" in text and "[scrubbed:pw]" in text and "[scrubbed:key]" in text
    assert text.endswith("abc")  # too short to be a generated secret: left alone
    assert scrub.count == 3


def test_postmortem_names_the_unhealthy_service_and_its_last_failing_probe():
    status = [
        {"service": "vault", "container": "s-vault", "state": "running", "health": "alive, not ready"},
        {"service": "postgres", "container": "s-postgres", "state": "running", "health": "healthy"},
    ]
    health = {"vault": {"health": {"Log": [{"ExitCode": 0, "Output": "ok"}, {"ExitCode": 2, "Output": "Sealed  true"}]}}}
    events = [{"time": 0, "type": "container", "action": "health_status", "container": "s-vault", "health_status": "unhealthy"}]
    text = postmortem("s", status, health, {}, events, "2026-12-01T00:00:00Z")
    assert "**vault**" in text and "Sealed  true" in text
    assert "postgres**" not in text
    assert "1970-01-01 00:00:00 s-vault: health_status → unhealthy" in text
    for section in ("## Impact", "## Timeline (UTC)", "## Root cause", "## Action items"):
        assert section in text


# --- credentials issued at run time: scrubbed by shape ------------------------------------------


def directus_token(key: bytes, user: str = "3c2a1f0e-9b8d-4c7a-8e6f-5d4c3b2a1f0e") -> str:
    """An access token as Directus signs it (HS256 over its claims): it verifies with ``key``."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = part(json.dumps({"id": user, "role": None, "app_access": True, "admin_access": False, "session": secrets.token_urlsafe(48), "iat": 1796000000, "exp": 1796000900, "iss": "directus"}).encode())
    signature = part(hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest())
    return f"{header}.{claims}.{signature}"


TOKEN = directus_token(secrets.token_bytes(48))
SESSION = secrets.token_urlsafe(48)
PASSWORD = secrets.token_urlsafe(24)
VAULT_TOKEN = "hvs." + secrets.token_urlsafe(68)

# (id, a line as the service writes it, the credential that must not survive it)
LEAKS = [
    ("nginx-combined-access-token", f'10.89.0.3 - - [07/Dec/2026:16:12:01 +0000] "GET /directus/assets/8f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f?access_token={TOKEN}&width=320 HTTP/1.1" 200 48213 "-" "Mozilla/5.0"', TOKEN),
    ("referrer-with-token", f'"GET /directus/admin/ HTTP/1.1" 200 512 "https://app.example.org/directus/admin/reset-password?token={SESSION}" "Mozilla/5.0"', SESSION),
    ("authorization-json", json.dumps({"level": 30, "req": {"method": "GET", "url": "/items/notes", "headers": {"authorization": f"Bearer {TOKEN}", "host": "directus"}}}), TOKEN),
    ("authorization-header-line", f"Authorization: Bearer {SESSION}", SESSION),
    ("cookie-header", f"cookie: directus_session_token={SESSION}; theme=dark", SESSION),
    ("set-cookie", f"Set-Cookie: directus_refresh_token={SESSION}; Max-Age=604800; Path=/; HttpOnly; Secure; SameSite=Lax", SESSION),
    ("basic-auth-url", f"upload failed: PUT https://directus:{PASSWORD}@minio:9000/uploads/x: 403", PASSWORD),
    ("basic-auth-header", f"proxy sent Authorization: Basic {base64.b64encode(f'admin:{PASSWORD}'.encode()).decode()}", PASSWORD),
    ("libpq-conninfo", f'connection to server failed: host=postgres user=hasura password={PASSWORD} dbname=app', PASSWORD),
    ("form-body", f'POST /auth/login body email=admin%40app.example.org&password={PASSWORD}', PASSWORD),
    ("password-json", json.dumps({"email": "admin@app.example.org", "password": PASSWORD}), PASSWORD),
    ("short-password-json", json.dumps({"level": 40, "body": {"password": "hunter2hunter2", "email": "a@b.c"}}), "hunter2hunter2"),
    ("token-json-escaped", json.dumps({"token": 'ab"cd\\ef-' + PASSWORD}), PASSWORD),
    ("vault-token-plain", f"login ok, client token {VAULT_TOKEN} policies [app-embedder]", VAULT_TOKEN[4:]),
    ("hasura-admin-secret", f"x-hasura-admin-secret: {PASSWORD}", PASSWORD),
    ("jwt-in-prose", f"token {TOKEN} expired at 2026-12-07T16:27:01Z", TOKEN.split(".")[2]),
]


@pytest.mark.parametrize(("line", "credential"), [pytest.param(line, cred, id=name) for name, line, cred in LEAKS])
def test_scrubber_removes_credentials_it_never_held_by_their_shape(line, credential):
    scrub = Scrubber({})
    text = scrub(line)
    assert credential not in text, text
    assert "[scrubbed:" in text and scrub.count >= 1
    for part in TOKEN.split("."):  # no piece of a token survives either
        assert part not in text or part.startswith("eyJhbGciOi"), text  # the standard header is no secret


def test_a_known_secret_is_scrubbed_url_encoded_and_json_escaped_too():
    unseal = base64.b64encode(secrets.token_bytes(32)).decode()  # +, / and = need encoding
    while not any(c in unseal for c in "+/"):
        unseal = base64.b64encode(secrets.token_bytes(32)).decode()
    multi_line = "line one\nline\ttwo with a tab and more"
    encoded = quote(unseal, safe="")
    scrub = Scrubber({"vault_unseal_key_0": unseal, "pem": multi_line})
    text = scrub(f"GET /v1/sys/unseal?unseal={encoded} and form key%3D{encoded} json {json.dumps(multi_line)}")
    assert unseal not in text and encoded not in text and "two with a tab" not in text, text
    assert "[scrubbed:vault_unseal_key_0]" in text


# What a diagnose bundle is made of and must keep readable: nothing here is a credential.
KEPT = [
    "image docker.io/library/nginx:1.27@sha256:5d435a6756de53709bf48c15b822cabab38d57acd22e656cf633cc2df67df150",
    "container 9f3b7c1d2e4a5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8",
    "row 8f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f created at 2026-12-07T16:12:01.123456Z",
    '10.89.0.3 [07/Dec/2026:16:12:01 +0000] "GET /directus/assets/8f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f HTTP/1.1" 200 48213 0.012 "Mozilla/5.0"',
    "HASURA_GRAPHQL_LIVE_QUERIES_MULTIPLEXED_REFETCH_INTERVAL=1000 REFRESH_TOKEN_COOKIE_SECURE=true",
    "redis://directus:{value}@redis:6379",
    "/var/lib/ccoas/stacks/prod/rendered/directus/extensions/ccoas-hasura-claims/index.js",
    "ERROR: duplicate key value violates unique constraint notes_pkey",
    "invalid token provided; basic configuration loaded; Bearer authentication required",
]


@pytest.mark.parametrize("line", KEPT, ids=range(len(KEPT)))
def test_scrubber_keeps_what_only_looks_technical(line):
    scrub = Scrubber({})
    assert scrub(line) == line
    assert scrub.count == 0


def test_the_plans_of_the_shipped_stacks_survive_the_scrubber_whole(load_plan):
    for name in ("dev", "ci", "prod"):
        text = load_plan(name).to_json()
        assert Scrubber({})(text) == text, name
