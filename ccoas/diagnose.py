"""``ccoas diagnose``: one tarball for a bug report or a postmortem, with no secret value in it.

It gathers what an operator facing a failed stack needs: the plan, the status (as
``status --json`` prints it), each container's inspect state and health-check history, the
last lines of every service's log, the container events of the stack, engine and host facts
(versions, cgroup version, rootless settings), and the reachability matrix measured from
inside each container. From those it fills a postmortem skeleton (``postmortem.md``): a
timeline, the impact (which services are not healthy, with their last failing probe
output), and the sections a human must write.

Every member is scrubbed before it is written, twice over:

- by value: each secret value the stack holds (the secret files ccoas materialised, the Vault
  unseal key and ccoas's token), as written and URL-encoded, is replaced by ``[scrubbed:NAME]``,
  a multi-line value (a TLS key) line by line too;
- by shape, for credentials issued at run time that ccoas never holds (a user's Directus
  token, a Basic-auth password in a URL, a session cookie): JWTs, credential query parameters
  (``access_token=``, ``token=``, ``password=``…), ``Authorization``/``Cookie`` headers and
  bearer tokens, ``user:password@`` in URLs, and long high-entropy strings become
  ``[scrubbed:<shape>]`` (see :data:`SHAPES`).
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

from ccoas import host_files
from ccoas import __version__

if TYPE_CHECKING:
    from ccoas.engine.local import LocalEngine

LOG_LINES = 200
MIN_SECRET_LENGTH = 6
"""Shorter values (none are generated) would scrub ordinary words."""


@dataclass
class DiagnoseResult:
    path: Path
    unhealthy: dict[str, str]
    """Service → its health, for every service that is not healthy."""
    scrubbed: int


# -- secrets ----------------------------------------------------------------------------------


def secret_values(engine: LocalEngine) -> dict[str, str]:
    """Every secret value this host holds for the stack, by name (never written anywhere)."""
    values: dict[str, str] = {}
    for service in engine.plan.services:
        for mount in service.secrets:
            path = engine.paths.secret_file(service.name, mount.secret)
            try:
                content = host_files.read_file(path).decode()  # the engine user's dir: never through a link
            except (FileNotFoundError, PermissionError, host_files.UnsafePathError):
                continue
            values[mount.secret] = content
            if mount.format:  # the file holds a URL around the value: find the value itself
                before, _, after = mount.format.partition("{value}")
                values[mount.secret] = content[len(before): len(content) - len(after) if after else None]
    try:
        material = json.loads(engine.paths.vault_init.read_text())
        for index, key in enumerate(material.get("keys_base64", [])):
            values[f"vault_unseal_key_{index}"] = key
        if material.get("root_token"):
            values["vault_root_token"] = material["root_token"]
    except (FileNotFoundError, ValueError):
        pass
    try:
        values["vault_ccoas_token"] = engine.paths.ccoas_token.read_text().strip()
    except FileNotFoundError:
        pass
    return {name: value for name, value in values.items() if value}


CREDENTIAL_PARAMS = (
    "access_token", "refresh_token", "id_token", "token", "password", "passwd", "pass", "pwd", "secret",
    "client_secret", "api_key", "apikey", "key", "auth", "code", "session", "sig", "signature",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
)
"""Query or form parameters whose value is a credential."""
CREDENTIAL_FIELDS = ("access_token", "refresh_token", "id_token", "token", "password", "passwd", "client_secret", "api_key", "apikey")
"""JSON fields whose string value is a credential (``"secret"`` and ``"key"`` name things in a plan)."""
CREDENTIAL_HEADERS = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-hasura-admin-secret",
    "x-vault-token", "x-api-key", "x-amz-security-token",
)
"""Headers whose value is a credential, in a log line, a dump or a JSON object."""
HIGH_ENTROPY_MIN_LENGTH = 32
HIGH_ENTROPY_BITS = 4.2
"""Bits per character above which a long token is taken for a secret. Hex (image digests,
container ids: at most 4.0) and words stay; a random base64 or base62 string of 32 or more
characters is above it."""

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PARAM = re.compile(r"(?i)((?:[?&;]|\b)(?:%s)=)(?!\[scrubbed:)[^&\s\"'<>;,]+" % "|".join(re.escape(p) for p in CREDENTIAL_PARAMS))
_HEADER = re.compile(r"""(?im)(\b(?:%s)\b["']?\s*[:=]\s*["']?)(?!\[scrubbed:)[^"'\r\n]+""" % "|".join(re.escape(h) for h in CREDENTIAL_HEADERS))
_JSON_FIELD = re.compile(r"""(?i)("(?:%s)"\s*:\s*")(?!\[scrubbed:)(?:[^"\\]|\\.)+(?=")""" % "|".join(re.escape(p) for p in (*CREDENTIAL_FIELDS, *CREDENTIAL_HEADERS)))
_SCHEME_TOKEN = re.compile(r"(?i)\b(Bearer|Basic|Digest)\s+(?=[A-Za-z_~+/-]*[0-9=.])[A-Za-z0-9._~+/=-]{8,}")
"""A credential after its scheme; one with a digit, ``=`` or ``.`` in it (prose has none)."""
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@\"']+:)(?!\{value\}@|\[scrubbed:)[^/\s@\"']+@")
_CANDIDATE = re.compile(r"[A-Za-z0-9_+/=-]{%d,}" % HIGH_ENTROPY_MIN_LENGTH)


def _high_entropy(token: str) -> bool:
    """Random-looking: upper case, lower case and digits mixed, and many bits per character."""
    if not (any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token)):
        return False
    counts = {c: token.count(c) for c in set(token)}
    bits = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
    return bits >= HIGH_ENTROPY_BITS


def _high_entropy_strings(match: re.Match[str]) -> str:
    return "[scrubbed:high-entropy]" if _high_entropy(match.group(0)) else match.group(0)


SHAPES: tuple[tuple[str, re.Pattern[str], Any], ...] = (
    ("jwt", _JWT, "[scrubbed:jwt]"),
    ("userinfo", _USERINFO, r"\1[scrubbed:userinfo]@"),
    ("header", _HEADER, r"\1[scrubbed:header]"),
    ("scheme-token", _SCHEME_TOKEN, r"\1 [scrubbed:token]"),
    ("param", _PARAM, r"\1[scrubbed:param]"),
    ("json-field", _JSON_FIELD, r"\1[scrubbed:field]"),
    ("high-entropy", _CANDIDATE, _high_entropy_strings),
)
"""Credential shapes, in the order they are scrubbed (a JWT first, whole, wherever it sits)."""


class Scrubber:
    def __init__(self, values: dict[str, str]):
        pieces: list[tuple[str, str]] = []
        for name, value in values.items():
            for form in {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}:
                pieces.append((form, name))
            pieces += [(line.strip(), name) for line in value.splitlines() if len(line.strip()) >= 16]
        # longest first: a value that contains another is replaced whole
        self.pieces = sorted({p for p in pieces if len(p[0]) >= MIN_SECRET_LENGTH}, key=lambda p: -len(p[0]))
        self.count = 0

    def __call__(self, text: str) -> str:
        for value, name in self.pieces:
            if value in text:
                self.count += text.count(value)
                text = text.replace(value, f"[scrubbed:{name}]")
        for _, pattern, replacement in SHAPES:
            text = pattern.sub(lambda match: self._replace(match, replacement), text)
        return text

    def _replace(self, match: re.Match[str], replacement: Any) -> str:
        after = replacement(match) if callable(replacement) else match.expand(replacement)
        self.count += after != match.group(0)
        return after


# -- what is gathered -------------------------------------------------------------------------


def _health_history(engine: LocalEngine, container: Any) -> dict[str, Any]:
    container.reload()
    state = container.attrs.get("State", {})
    history: dict[str, Any] = {"state": {k: state.get(k) for k in ("Status", "Running", "ExitCode", "Error", "StartedAt", "FinishedAt", "OOMKilled", "Restarting")}}
    history["health"] = state.get("Health") or state.get("Healthcheck")
    return history


def _logs(container: Any, lines: int) -> str:
    try:
        return container.logs(tail=lines, timestamps=True).decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - a log that cannot be read is reported, not fatal
        return f"(logs unavailable: {exc})\n"


NOISE = ("exec", "exec_died", "cleanup", "init", "attach", "mount", "unmount", "sync")
"""Event actions left out of the timeline (health probes alone make hundreds of exec events)."""


def _events(engine: LocalEngine, since_s: int) -> list[dict[str, Any]]:
    """The stack's container events of the last ``since_s`` seconds, health transitions only when they change."""
    names = [s.container_name for s in engine.plan.services]
    try:
        if engine.is_podman:  # the compat endpoint answers nothing for a bounded window: ask libpod
            response = engine.client.api.get(
                engine.runtime.libpod_url("/events"),
                params={"since": f"{since_s}s", "stream": "false", "filters": json.dumps({"container": names})},
                timeout=60,
            )
            response.raise_for_status()
            raw = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        else:
            raw = list(engine.client.events(since=int(time.time()) - since_s, until=int(time.time()), decode=True, filters={"container": names}))
    except Exception as exc:  # noqa: BLE001 - events are an aid, not a requirement
        return [{"error": f"events unavailable: {exc}"}]
    events: list[dict[str, Any]] = []
    last_health: dict[str, str] = {}
    for event in raw:
        action = event.get("Action") or event.get("status")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        container = attributes.get("name")
        if event.get("Type") != "container" or action in NOISE or container not in names:
            continue
        health = event.get("HealthStatus") or attributes.get("health_status")
        if action == "health_status":
            if last_health.get(container) == health:
                continue
            last_health[container] = health
        events.append({"time": event.get("time"), "action": action, "container": container, "health_status": health or None, "exit_code": attributes.get("containerExitCode")})
    return events


def host_facts(engine: LocalEngine) -> dict[str, Any]:
    info = engine.client.info()
    version = engine.client.version()
    host = info.get("host", {}) if isinstance(info.get("host"), dict) else {}
    facts: dict[str, Any] = {
        "ccoas_version": __version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "engine": {
            "version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "components": [{"name": c.get("Name"), "version": c.get("Version")} for c in version.get("Components", [])],
            "is_podman": engine.is_podman,
        },
        "cgroup_version": info.get("CgroupVersion") or host.get("cgroupVersion"),
        "cgroup_driver": info.get("CgroupDriver"),
        "storage_driver": info.get("Driver"),
        "runtime": info.get("DefaultRuntime"),
        "security_options": info.get("SecurityOptions"),
        "rootless": engine.is_podman or "rootless" in json.dumps(info.get("SecurityOptions", [])),
        "engine_user": {"name": engine.layout.engine_user, "uid": engine.layout.uid, "subuid_start": engine.layout.subuid_start},
        "host_notes": engine.host_notes(),
    }
    try:
        facts["os_release"] = dict(
            line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
        )
    except OSError:
        pass
    return facts


PROBE = (
    'h="$1"; p="$2"; '
    'if command -v bash >/dev/null 2>&1; then timeout 3 bash -c "exec 3<>/dev/tcp/$h/$p" 2>/dev/null && echo open || echo closed; '
    'elif command -v curl >/dev/null 2>&1; then curl -s --max-time 3 -o /dev/null "telnet://$h:$p" </dev/null && echo open || echo closed; '
    'elif command -v nc >/dev/null 2>&1; then nc -z -w 3 "$h" "$p" && echo open || echo closed; '
    "else echo unknown; fi"
)


def reachability(engine: LocalEngine) -> dict[str, dict[str, str]]:
    """From inside each running container: can it open a TCP connection to each other service's
    ports, by name? ``open`` / ``closed`` / ``unknown`` (no probe tool in that image)."""
    matrix: dict[str, dict[str, str]] = {}
    for source in engine.plan.services:
        container = engine.runtime.container(source)
        if container is None or container.status != "running":
            continue
        row: dict[str, str] = {}
        for target in engine.plan.services:
            if target.name == source.name:
                continue
            for port in target.expose:
                try:
                    result = container.exec_run(["sh", "-c", PROBE, "probe", target.name, str(port)], user=source.user)
                    answer = result.output.decode(errors="replace").strip().splitlines()
                    row[f"{target.name}:{port}"] = answer[-1] if answer else "unknown"
                except Exception:  # noqa: BLE001
                    row[f"{target.name}:{port}"] = "unknown"
        matrix[source.name] = row
    return matrix


# -- the postmortem skeleton ------------------------------------------------------------------


def _last_failing_probe(health: dict[str, Any] | None) -> str | None:
    for entry in reversed((health or {}).get("Log") or []):
        if entry.get("ExitCode", 0) != 0:
            return str(entry.get("Output", "")).strip() or f"exit code {entry.get('ExitCode')}"
    return None


def postmortem(plan_name: str, status: list[dict[str, Any]], health: dict[str, dict[str, Any]], probes: dict[str, str], events: list[dict[str, Any]], now: str) -> str:
    unhealthy = [row for row in status if row["health"] != "healthy"]
    lines = [
        f"# Postmortem: stack {plan_name}",
        "",
        f"Filled by `ccoas diagnose` at {now} from the bundle beside it; every *TODO* is for a human.",
        "",
        "## Summary",
        "",
        (
            f"{len(unhealthy)} of {len(status)} services not healthy: {', '.join(r['service'] for r in unhealthy)}."
            if unhealthy
            else f"All {len(status)} services healthy when the bundle was taken."
        ),
        "",
        "## Impact",
        "",
    ]
    for row in unhealthy:
        lines.append(f"- **{row['service']}** ({row['container']}): state `{row['state']}`, health `{row['health']}`.")
        output = probes.get(row["service"]) or _last_failing_probe((health.get(row["service"]) or {}).get("health"))
        if output:
            lines += ["  Last failing probe output:", "", "  ```", *(f"  {line}" for line in output.splitlines()[-15:]), "  ```"]
        else:
            lines.append("  No failing probe output recorded (see `logs/` in the bundle).")
    if not unhealthy:
        lines.append("- None observed. *TODO: what did users see?*")
    lines += ["", "## Timeline (UTC)", ""]
    for event in events:
        if "error" in event:
            lines.append(f"- {event['error']}")
            continue
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event["time"])) if event.get("time") is not None else "?"
        health_note = f" → {event['health_status']}" if event.get("health_status") else ""
        if event.get("action") == "died" and event.get("exit_code") is not None:
            health_note = f" (exit code {event['exit_code']})"
        lines.append(f"- {stamp} {event.get('container') or '?'}: {event.get('action')}{health_note}")
    if not events:
        lines.append("- No container events recorded in the window.")
    lines += [
        f"- {now} `ccoas diagnose` ran.",
        "",
        "## Root cause",
        "",
        "*TODO.* Start from the impact above, `logs/<service>.log` and `health/<service>.json`.",
        "",
        "## Action items",
        "",
        *(f"- [ ] Restore {row['service']} to healthy; find why its probe fails." for row in unhealthy),
        "- [ ] *TODO: what prevents a recurrence (a test, a check, an alert)?*",
        "",
    ]
    return "\n".join(lines)


# -- the bundle -------------------------------------------------------------------------------


def diagnose(engine: LocalEngine, out: Path, log_lines: int = LOG_LINES, since_s: int = 24 * 3600) -> DiagnoseResult:
    """Write the diagnose tarball (gzip, 0600) to ``out``."""
    scrub = Scrubber(secret_values(engine))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = [row.as_dict() for row in engine.status()]
    health: dict[str, dict[str, Any]] = {}
    logs: dict[str, str] = {}
    probes: dict[str, str] = {}
    for service in engine.plan.services:
        container = engine.runtime.container(service)
        if container is None:
            continue
        if container.status == "running":
            ok, output = engine.runtime.probe(service, service.healthcheck, container)
            if not ok:
                probes[service.name] = output.strip()
        health[service.name] = _health_history(engine, container)
        logs[service.name] = _logs(container, log_lines)
    events = _events(engine, since_s)
    members = {
        "plan.json": engine.plan.to_json(),
        "status.json": json.dumps(status, indent=2, sort_keys=True) + "\n",
        "host.json": json.dumps(host_facts(engine), indent=2, sort_keys=True, default=str) + "\n",
        "events.json": json.dumps(events, indent=2, sort_keys=True) + "\n",
        "reachability.json": json.dumps(reachability(engine), indent=2, sort_keys=True) + "\n",
        **{f"health/{name}.json": json.dumps(data, indent=2, sort_keys=True, default=str) + "\n" for name, data in health.items()},
        **{f"logs/{name}.log": text for name, text in logs.items()},
    }
    members["postmortem.md"] = postmortem(engine.plan.stack, status, health, probes, events, now)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in sorted(members.items()):
            data = scrub(text).encode()
            info = tarfile.TarInfo(f"ccoas-diagnose-{engine.plan.stack}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(buffer.getvalue())
    unhealthy = {row["service"]: row["health"] for row in status if row["health"] != "healthy"}
    return DiagnoseResult(path=out, unhealthy=unhealthy, scrubbed=scrub.count)
