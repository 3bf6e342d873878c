"""Diagnose, with no host: the scrubber and the postmortem skeleton (the e2e tier runs it on a
stack with an unhealthy service)."""

from __future__ import annotations

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
