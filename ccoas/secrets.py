"""Secrets: generated with a CSPRNG, kept in Vault, delivered to containers as files.

The flow, every ``up``:

1. :meth:`VaultBootstrap.converge` — initialise Vault on first start (the unseal key and
   root token go to the stack's state dir, 0600), unseal it, and with the root token
   *once*: enable the KV v2 mount, the stack CA (PKI mount, see :mod:`ccoas.tls`), the file
   audit device, the per-service policies, a token role, and a narrowly scoped ``ccoas``
   token; then revoke the root token.
   From then on ccoas uses only its own token, which may write secrets and read their
   metadata but never read a value.
2. :meth:`SecretStore.ensure` — generate every secret the plan declares that Vault does
   not have yet.
3. :meth:`SecretStore.materialize` — for each service, a short-lived token with *that
   service's* policy reads its secrets, which are written as files (0400, owned by the
   service's uid) that the engine bind-mounts read-only at ``/run/secrets/<name>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as csprng
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol
from urllib.parse import quote

from ccoas import host_files
from ccoas.errors import CcoasError
from ccoas.plan import Plan, Secret, Service, VaultPolicy
from ccoas.state import StackPaths, secret_file_in

SERVICE_TOKEN_TTL = "5m"
TLS_GENERATORS = ("tls-cert", "tls-key")


class VaultError(CcoasError):
    """Vault refused or failed a bootstrap step."""


VAULT_TIMEOUT_S = 60


def vault_client(socket: Path, token: str | None = None, timeout: float = VAULT_TIMEOUT_S):
    """An hvac client that talks to Vault over its unix socket (no published port)."""
    import hvac
    import requests_unixsocket

    return hvac.Client(url="http+unix://" + quote(str(socket), safe=""), token=token, session=requests_unixsocket.Session(), timeout=timeout)


def _vault_failures() -> tuple[type[BaseException], ...]:
    """What a Vault call raises when Vault refuses or cannot be reached (not a bug of ours)."""
    import hvac.exceptions
    import requests

    return (hvac.exceptions.VaultError, requests.RequestException)


def service_policy_hcl(policy: VaultPolicy, plan: Plan) -> str:
    """A service may read exactly its own secrets' current values; nothing else."""
    assert plan.vault is not None
    lines = [f"# {policy.name}: what the {policy.service} service may read"]
    for path in sorted(policy.read_paths):
        lines.append(f'path "{plan.vault.kv_mount}/data/{plan.vault.prefix}/{path}" {{\n  capabilities = ["read"]\n}}')
    return "\n".join(lines) + "\n"


def generates_tls(plan: Plan) -> bool:
    """ccoas makes the edge's certificate (``tls.mode: generate``): the stack CA in Vault issues it."""
    return plan.tls is not None and plan.tls.mode == "generate" and any(s.generator == "tls-cert" for s in plan.secrets)


def stack_ca_missing(plan: Plan, client) -> bool:
    """The stack generates its certificate but Vault has no stack CA: no PKI mount or an empty
    one. ``<CA_MOUNT>/ca/pem`` is unauthenticated where the mount exists, so a 403 there means
    no mount serves the path (404 through some clients), never a policy that forbids it."""
    import hvac.exceptions

    from ccoas.tls import CA_MOUNT

    if not generates_tls(plan):
        return False
    try:
        return not client.secrets.pki.read_ca_certificate(mount_point=CA_MOUNT).strip()
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath):
        return True


def ccoas_policy_hcl(plan: Plan) -> str:
    """The operator token ccoas keeps: write secrets and read metadata, never read a value.

    It may read the stack's policies but never write one: writing a policy is root-equivalent.
    Policy changes go through a one-off root token minted from the unseal key and revoked.
    """
    assert plan.vault is not None
    mount, prefix = plan.vault.kv_mount, plan.vault.prefix
    rules = [
        (f"{mount}/data/{prefix}/*", '["create", "update"]'),
        (f"{mount}/metadata/{prefix}/*", '["read", "list", "delete"]'),
        (f"{mount}/metadata/{prefix}", '["list"]'),
        (f"sys/policy/{prefix}-*", '["read"]'),
        (f"auth/token/create/{prefix}-services", '["update"]'),
        ("auth/token/renew-self", '["update"]'),
        ("auth/token/lookup-self", '["read"]'),
    ]
    if generates_tls(plan):  # issue the edge's certificate from the stack CA (never read its key: it has none to read)
        from ccoas.tls import CA_MOUNT, LEAF_ROLE

        rules.append((f"{CA_MOUNT}/issue/{LEAF_ROLE}", '["update"]'))
    body = "\n".join(f'path "{path}" {{\n  capabilities = {caps}\n}}' for path, caps in rules)
    return f"# {plan.vault.ccoas_policy}: the token ccoas itself uses after bootstrap\n{body}\n"


@contextmanager
def deferred_interrupts():
    """Ctrl-C (SIGINT/SIGTERM) waits until the block is done, then interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: received.append(number)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            raise KeyboardInterrupt


def _write_private(path: Path, text: str) -> None:
    """Root's 0600 file in the (root-owned) state dir, written atomically."""
    host_files.write_file(path, text.encode(), 0o600, parents_mode=0o755)


@dataclass
class VaultBootstrap:
    plan: Plan
    paths: StackPaths
    socket: Path
    timeout: float = VAULT_TIMEOUT_S
    """Seconds each Vault call may take before it fails (and stops the bootstrap)."""

    def _init_material(self) -> dict:
        try:
            return json.loads(self.paths.vault_init.read_text())
        except FileNotFoundError:
            return {}

    def converge(self) -> int:
        """Initialise, unseal and configure Vault; returns the number of changes made."""
        try:
            return self._converge()
        except _vault_failures() as exc:
            raise VaultError(f"Vault bootstrap failed ({type(exc).__name__}): {exc}") from None

    def _converge(self) -> int:
        assert self.plan.vault is not None
        client = vault_client(self.socket, timeout=self.timeout)
        changes = 0
        if not client.sys.is_initialized():
            if self.paths.vault_init.exists():
                raise VaultError(
                    f"Vault's storage is empty but {self.paths.vault_init} exists: refusing to overwrite unseal material. "
                    "If the stack was purged, remove that file; otherwise restore the vault-data volume."
                )
            with deferred_interrupts():  # the unseal key exists only in this response: keep it
                result = client.sys.initialize(secret_shares=1, secret_threshold=1)
                _write_private(self.paths.vault_init, json.dumps({"keys_base64": result["keys_base64"], "root_token": result["root_token"]}))
            changes += 1
        material = self._init_material()
        if not material:
            raise VaultError(f"Vault is initialised but its unseal material {self.paths.vault_init} is missing")
        if client.sys.is_sealed():
            for key in material["keys_base64"]:
                client.sys.submit_unseal_key(key)
        self.wait_active(client)
        root_token = material.get("root_token")
        if not root_token and (not self._ccoas_token_valid() or self._policies_outdated() or self._stack_ca_missing()):
            # ccoas's token is gone or expired, a bootstrap was interrupted, or the plan's
            # policies changed: mint a one-off root token from the unseal key, converge, revoke it.
            root_token = self._root_from_unseal_keys(client, material["keys_base64"])
        if root_token:
            with deferred_interrupts():  # token file and init material must agree with Vault
                self._first_bootstrap(vault_client(self.socket, root_token, self.timeout))
                material.pop("root_token", None)
                _write_private(self.paths.vault_init, json.dumps(material))
            changes += 1
        self.ccoas_client()  # renews ccoas's periodic token
        return changes

    def _ccoas_token_valid(self) -> bool:
        """False only when Vault says the token is not valid (403: expired, revoked, unknown).

        Anything else (a timeout, a 5xx) raises: this answer decides whether a root token is
        minted, and an unrelated failure must never lead there.
        """
        import hvac.exceptions

        try:
            token = self.paths.ccoas_token.read_text().strip()
        except FileNotFoundError:
            return False
        try:
            vault_client(self.socket, token, self.timeout).auth.token.lookup_self()
            return True
        except hvac.exceptions.Forbidden:
            return False

    def _stack_ca_missing(self) -> bool:
        return stack_ca_missing(self.plan, self.ccoas_client())

    def _root_from_unseal_keys(self, client, keys: list[str]) -> str:
        """The generate-root flow with the unseal keys ccoas holds; the token is revoked right after use."""
        client.sys.cancel_root_generation()  # an interrupted attempt; a no-op (204) when none is in progress
        attempt = client.sys.start_root_token_generation()
        otp, nonce = attempt["otp"], attempt["nonce"]
        result: dict = {}
        for key in keys:
            result = client.sys.generate_root(key=key, nonce=nonce)
        encoded = result.get("encoded_token") or result.get("encoded_root_token")
        if not result.get("complete") or not encoded:
            raise VaultError("generating a recovery root token from the unseal key did not complete")
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        return bytes(a ^ b for a, b in zip(raw, otp.encode())).decode()

    @contextmanager
    def root_client(self):
        """A client with a one-off root token minted from the unseal key, revoked when the block ends
        (for what only root may do, e.g. a raft snapshot)."""
        client = vault_client(self.socket)
        token = self._root_from_unseal_keys(client, self._init_material()["keys_base64"])
        root = vault_client(self.socket, token)
        try:
            yield root
        finally:
            root.auth.token.revoke_self()

    def wait_active(self, client) -> None:
        """Unsealed is not enough: integrated storage must elect this node active first."""
        for _ in range(150):
            response = client.sys.read_health_status(method="GET")
            code = getattr(response, "status_code", 200)
            if code == 200:
                return
            time.sleep(0.2)
        raise VaultError("Vault did not become active within 30s of unsealing")

    def _first_bootstrap(self, root) -> None:
        vault = self.plan.vault
        assert vault is not None
        if f"{vault.kv_mount}/" not in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.enable_secrets_engine("kv", path=vault.kv_mount, options={"version": "2"})
        if "file/" not in root.sys.list_enabled_audit_devices()["data"]:
            # OpenBao refuses audit devices over the API (CVE-2025-54997): its rendered config
            # declares the device instead. HashiCorp Vault takes it here.
            try:
                root.sys.enable_audit_device("file", path="file", options={"file_path": vault.audit_path})
            except _vault_failures() as exc:
                raise VaultError(f"the file audit device is neither declared in the config nor enabled over the API: {exc}") from None
        if generates_tls(self.plan):
            self._ensure_stack_ca(root)
        for name, text in self.wanted_policies().items():
            root.sys.create_or_update_policy(name, text)
        self._write_token_role(root)
        if self._ccoas_token_valid():
            root.auth.token.revoke_self()
            return
        # An orphan: revoking the root token below must not revoke it too.
        token = root.auth.token.create(
            policies=[vault.ccoas_policy], no_default_policy=True, no_parent=True, period="768h", display_name="ccoas"
        )
        _write_private(self.paths.ccoas_token, token["auth"]["client_token"])
        root.auth.token.revoke_self()

    def _ensure_stack_ca(self, root) -> None:
        """The stack CA (see :mod:`ccoas.tls`): Vault's PKI engine at ``CA_MOUNT``, a root made
        once inside it and kept (renewals issue new leaves from the same CA), and the role ccoas
        issues through. A stack from before the CA gets it here: its ccoas policy is outdated."""
        from ccoas.tls import CA_DAYS, CA_MOUNT, LEAF_ROLE, ca_request, leaf_role

        assert self.plan.tls is not None
        if f"{CA_MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.enable_secrets_engine(
                "pki", path=CA_MOUNT, config={"max_lease_ttl": f"{CA_DAYS * 24}h"}, description=f"stack CA of {self.plan.stack}"
            )
        if not root.secrets.pki.read_ca_certificate(mount_point=CA_MOUNT).strip():
            request = ca_request(self.plan.tls.domain, self.plan.stack)
            common_name = str(request.pop("common_name"))
            root.secrets.pki.generate_root("internal", common_name, extra_params=request, mount_point=CA_MOUNT)
        root.secrets.pki.create_or_update_role(LEAF_ROLE, extra_params=leaf_role(self.plan.tls.domain), mount_point=CA_MOUNT)

    def _write_token_role(self, client) -> None:
        vault = self.plan.vault
        assert vault is not None
        client.auth.token.create_or_update_role(
            f"{vault.prefix}-services",
            allowed_policies=[p.name for p in vault.policies],
            orphan=True,
            renewable=False,
            token_explicit_max_ttl=300,
        )

    def ccoas_client(self):
        try:
            token = self.paths.ccoas_token.read_text().strip()
        except FileNotFoundError:
            raise VaultError(f"ccoas's Vault token {self.paths.ccoas_token} is missing") from None
        client = vault_client(self.socket, token, self.timeout)
        client.auth.token.renew_self()
        return client

    def wanted_policies(self) -> dict[str, str]:
        vault = self.plan.vault
        assert vault is not None
        wanted = {vault.ccoas_policy: ccoas_policy_hcl(self.plan)}
        wanted.update({p.name: service_policy_hcl(p, self.plan) for p in vault.policies})
        return wanted

    def _policies_outdated(self) -> bool:
        """True when a wanted policy is absent (404) or differs. Any other failure raises: a
        True here mints a root token, which a 403 or a timeout must never do."""
        import hvac.exceptions

        client = self.ccoas_client()
        for name, text in self.wanted_policies().items():
            try:
                if client.sys.read_policy(name)["data"]["rules"] != text:
                    return True
            except hvac.exceptions.InvalidPath:
                return True
        return False


def secrets_fingerprint(service: Service, versions: Mapping[str, int | None]) -> str:
    """A hash of the versions (never the values) of the secrets ``service`` mounts: it goes into
    the container's spec hash, so a rotated secret recreates exactly the services that read it."""
    lines = [f"{mount.secret}:{versions.get(mount.secret)}" for mount in service.secrets]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def generate(secret: Secret) -> str:
    """A fresh value for ``secret`` from the CSPRNG (TLS pairs are made by :meth:`SecretStore.tls_pair`)."""
    if secret.generator == "password":
        return csprng.token_urlsafe(secret.length)[: secret.length]
    if secret.generator == "token":
        return csprng.token_hex(secret.length // 2 + 1)[: secret.length]
    if secret.generator == "key":
        return base64.b64encode(csprng.token_bytes(secret.length)).decode()
    if secret.generator == "username":
        return "u" + csprng.token_hex(secret.length)[: secret.length - 1]
    if secret.generator == "supplied":
        return ""  # a placeholder until the operator sets it (`ccoas secrets set`)
    raise ValueError(f"{secret.name}: generator {secret.generator} makes pairs, see ccoas.tls")


@dataclass(frozen=True)
class SecretInfo:
    name: str
    """OWNER/NAME, what ``ccoas secrets get`` takes."""
    path: str
    version: int | None
    readers: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "version": self.version, "readers": list(self.readers)}


@dataclass
class SecretStore:
    plan: Plan
    paths: StackPaths
    socket: Path
    """Vault's unix socket."""
    client: object
    """hvac client with the ccoas token, on ``socket``."""
    owners: "SecretOwners"
    """Maps container uids to host ones and gives files to them (the engine's :class:`~ccoas.host.HostLayout`)."""

    def _kv(self):
        return self.client.secrets.kv.v2  # type: ignore[attr-defined]

    def _full(self, secret: Secret) -> str:
        assert self.plan.vault is not None
        return f"{self.plan.vault.prefix}/{secret.vault_path}"

    def version(self, secret: Secret) -> int | None:
        """The current version, or None when Vault says the secret does not exist (404).

        Any other failure (403, timeout, 5xx) raises :class:`VaultError`: a failed read must
        never be taken for "absent", or :meth:`ensure` would write a new credential over a
        live one.
        """
        import hvac.exceptions

        assert self.plan.vault is not None
        path = f"{self.plan.vault.kv_mount}/metadata/{self._full(secret)}"
        try:
            meta = self._kv().read_secret_metadata(self._full(secret), mount_point=self.plan.vault.kv_mount)
        except hvac.exceptions.InvalidPath:
            return None
        except _vault_failures() as exc:
            raise VaultError(f"reading {path} failed ({type(exc).__name__}: {exc}); nothing was written") from exc
        return int(meta["data"]["current_version"])

    def versions(self) -> dict[str, int | None]:
        """Every plan secret's current version in Vault (``None``: not written yet)."""
        return {s.name: self.version(s) for s in self.plan.secrets}

    def put(self, secret: Secret, value: str) -> None:
        assert self.plan.vault is not None
        self._kv().create_or_update_secret(self._full(secret), secret={"value": value}, mount_point=self.plan.vault.kv_mount)

    def ca_certificate(self) -> str:
        """The stack CA's certificate (PEM), which signs every certificate ccoas generates."""
        from ccoas.tls import CA_MOUNT

        if not generates_tls(self.plan):
            raise CcoasError(f"stack {self.plan.stack} has no stack CA: its certificate is supplied (tls.mode: supplied)")
        try:
            pem = self.client.secrets.pki.read_ca_certificate(mount_point=CA_MOUNT)  # type: ignore[attr-defined]
        except _vault_failures() as exc:
            raise VaultError(f"reading the stack CA ({CA_MOUNT}/ca/pem) failed ({type(exc).__name__}: {exc}): run `ccoas up`") from None
        if not pem.strip():
            raise VaultError(f"stack {self.plan.stack}: Vault holds no stack CA yet: run `ccoas up`")
        return pem.strip() + "\n"

    def stack_ca_missing(self) -> bool:
        return stack_ca_missing(self.plan, self.client)

    def tls_pair(self) -> tuple[str, str]:
        """``(chain, key)`` for the edge: a new leaf from the stack CA, or the operator's pair."""
        from ccoas.tls import CA_MOUNT, LEAF_ROLE, chain, leaf_request, load_supplied

        tls = self.plan.tls
        assert tls is not None
        if not generates_tls(self.plan):
            return load_supplied(tls)
        try:
            issued = self.client.secrets.pki.generate_certificate(  # type: ignore[attr-defined]
                LEAF_ROLE, tls.domain, extra_params=leaf_request(tls.domain), mount_point=CA_MOUNT
            )["data"]
        except _vault_failures() as exc:
            raise VaultError(f"issuing a certificate for {tls.domain} from the stack CA failed ({type(exc).__name__}: {exc})") from None
        return chain(issued["certificate"], issued["issuing_ca"]), issued["private_key"]

    def ensure(self) -> int:
        """Generate every secret Vault does not hold yet. Returns how many were written."""
        written = 0
        missing = [s for s in self.plan.secrets if self.version(s) is None]
        for secret in missing:
            if secret.generator not in TLS_GENERATORS:
                self.put(secret, generate(secret))
                written += 1
        if any(s.generator in TLS_GENERATORS for s in missing) or self.certificate_renewal():
            # a pair is written whole, so that certificate and key always match
            cert, key = self.tls_pair()
            for secret in self.plan.secrets:
                if secret.generator in TLS_GENERATORS:
                    self.put(secret, cert if secret.generator == "tls-cert" else key)
                    written += 1
        return written

    def certificate_renewal(self) -> str | None:
        """Why the certificate ccoas generated must be issued again, or ``None``: less than
        RENEW_WITHIN_DAYS left, or not the stack CA's (self-signed, from before the CA). Read
        from the file it last delivered (ccoas's token never reads a value)."""
        from ccoas.tls import RENEW_WITHIN_DAYS, days_left, issued_by

        if not generates_tls(self.plan):
            return None
        ca = None
        for secret in self.plan.secrets:
            if secret.generator == "tls-cert":
                for reader in secret.readers:
                    try:  # the engine user's dir: never read through a link (materialize replaces one)
                        delivered = host_files.read_file(self.paths.secret_file(reader, secret.name)).decode()
                    except (FileNotFoundError, host_files.UnsafePathError):
                        continue
                    left = days_left(delivered)
                    if left < RENEW_WITHIN_DAYS:
                        return f"the edge certificate has {left:.1f} days left (renewed under {RENEW_WITHIN_DAYS})"
                    ca = ca or self.ca_certificate()
                    if not issued_by(delivered, ca):
                        return "the edge certificate is not the stack CA's (self-signed, from before the stack CA)"
        return None

    def rotate(self, service: str) -> list[Secret]:
        """New versions of every secret ``service`` owns (the plan's :attr:`Secret.owner`)."""
        owned = self.plan.owned_secrets(service)
        if not owned:
            raise CcoasError(f"{service}: owns no secrets in stack {self.plan.stack}")
        pair = None
        for secret in owned:
            if secret.generator == "supplied":
                continue  # the operator's value: `ccoas secrets set` replaces it
            if secret.generator in TLS_GENERATORS:
                pair = pair or self.tls_pair()
                self.put(secret, pair[0] if secret.generator == "tls-cert" else pair[1])
            else:
                self.put(secret, generate(secret))
        return owned

    def set(self, name: str, value: str) -> Secret:
        """Store the operator's value of the supplied secret ``name`` (OWNER/NAME)."""
        secret = next((s for s in self.plan.secrets if s.vault_path == name), None)
        supplied = sorted(s.vault_path for s in self.plan.secrets if s.generator == "supplied")
        if secret is None or secret.generator != "supplied":
            raise CcoasError(
                f"{name!r} is not a secret the operator supplies in stack {self.plan.stack} "
                f"(ccoas generates the others); supplied ones: {', '.join(supplied) or 'none'}"
            )
        self.put(secret, value)
        return secret

    def list(self) -> list[SecretInfo]:
        assert self.plan.vault is not None
        return [
            SecretInfo(s.vault_path, f"{self.plan.vault.kv_mount}/data/{self._full(s)}", self.version(s), s.readers)
            for s in self.plan.secrets
        ]

    def get(self, name: str) -> str:
        """The current value of the secret named ``name`` (OWNER/NAME), read with the policy of
        a service that reads it (ccoas's own token cannot read values)."""
        assert self.plan.vault is not None
        secret = next((s for s in self.plan.secrets if s.vault_path == name), None)
        if secret is None:
            known = ", ".join(sorted(s.vault_path for s in self.plan.secrets))
            raise CcoasError(f"no secret {name!r} in stack {self.plan.stack}; `ccoas secrets list` shows: {known}")
        if not secret.readers:
            raise CcoasError(f"{name}: no service reads it, so no policy may read its value")
        reader = self.service_client(secret.readers[0])
        try:
            response = reader.secrets.kv.v2.read_secret_version(
                self._full(secret), mount_point=self.plan.vault.kv_mount, raise_on_deleted_version=True
            )
        finally:
            try:
                reader.auth.token.revoke_self()
            except Exception:  # noqa: BLE001 - the token expires in minutes anyway
                pass
        return response["data"]["data"]["value"]

    def service_client(self, service: str):
        """A short-lived token carrying only ``service``'s policy."""
        assert self.plan.vault is not None
        token = self.client.auth.token.create(  # type: ignore[attr-defined]
            role_name=f"{self.plan.vault.prefix}-services",
            policies=[f"{self.plan.vault.prefix}-{service}"],
            ttl=SERVICE_TOKEN_TTL,
            no_default_policy=True,
        )["auth"]["client_token"]
        return vault_client(self.socket, token)

    def _read_mounts(self, service) -> list[tuple[object, str, int]]:
        """``(mount, file content, version)`` of each of ``service``'s secrets, read with its own policy."""
        assert self.plan.vault is not None
        reader = self.service_client(service.name)
        result = []
        try:
            for mount in service.secrets:
                secret = self.plan.secret(mount.secret)
                response = reader.secrets.kv.v2.read_secret_version(
                    self._full(secret), mount_point=self.plan.vault.kv_mount, raise_on_deleted_version=True
                )
                value = response["data"]["data"]["value"]
                if mount.format:
                    value = mount.format.replace("{value}", value)
                result.append((mount, value, int(response["data"]["metadata"]["version"])))
        finally:
            try:
                reader.auth.token.revoke_self()
            except _vault_failures():  # the token expires in minutes anyway
                pass
        return result

    def materialize(self) -> dict[str, str]:
        """Write each service's secret files; returns a fingerprint of versions per service.

        The fingerprint (a hash of secret versions, never values) goes into the container's
        spec hash, so a rotated secret recreates exactly the services that read it.
        """
        fingerprints: dict[str, str] = {}
        for service in self.plan.services:
            if not service.secrets:
                continue
            versions: dict[str, int | None] = {}
            for mount, value, version in self._read_mounts(service):
                versions[mount.secret] = version
                self._write_file(self.paths.secret_file(service.name, mount.secret), value, mount.uid, mount.gid)
            fingerprints[service.name] = secrets_fingerprint(service, versions)
        return fingerprints

    def export(self, out: Path) -> list[Path]:
        """Write every service's secret files from Vault into ``out``, laid out and owned as
        :func:`init_secret_files` does (what the rendered ``compose.yaml`` mounts)."""
        written = []
        for service in self.plan.services:
            for mount, value, _ in self._read_mounts(service) if service.secrets else []:
                path = secret_file_in(out, service.name, mount.secret)
                write_secret_file(out, path, value, mount.uid, mount.gid, self.owners)
                written.append(path)
        return sorted(written)

    def _write_file(self, path: Path, value: str, uid: int, gid: int) -> None:
        write_secret_file(self.paths.secrets, path, value, uid, gid, self.owners)


class SecretOwners(Protocol):
    """Who a secret file is given to: the engine's :class:`~ccoas.host.HostLayout` (or a test's stand-in)."""

    def host_ids(self, uid: int, gid: int) -> tuple[int, int]: ...

    def give(self, path: Path, uid: int, gid: int) -> None: ...


def write_secret_file(root: Path, path: Path, value: str, uid: int, gid: int, owners: SecretOwners) -> None:
    """Write ``value`` to ``path`` under the secrets directory ``root`` (0400, given to the
    container ``uid``/``gid``); ``root`` and ``path``'s directory stay the engine user's (container
    root), 0700, which it must traverse to bind-mount the file. An unchanged file is kept.

    These directories are the engine user's to write: as root every step is fd-relative and
    never follows a link (:mod:`ccoas.host_files`): the directories are opened with
    ``O_NOFOLLOW | O_DIRECTORY``, the file is made ``O_EXCL | O_NOFOLLOW``, given its owner with
    ``fchown`` on its fd and renamed into place."""
    as_root = os.geteuid() == 0
    for directory in (root, path.parent):
        if as_root:
            host_files.make_dir(directory, 0o700, owners.host_ids(0, 0))
        else:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            owners.give(directory, 0, 0)
    host_files.write_file(path, value.encode(), 0o400, owners.host_ids(uid, gid) if as_root else None, keep_if_same=True)
    if not as_root:
        owners.give(path, uid, gid)


def init_secret_files(plan: Plan, out: Path, owners: SecretOwners, engine_uid: int) -> list[Path]:
    """Compose mode, no Vault: generate every secret of ``plan`` with the generators the Vault
    path uses (:func:`generate`, :func:`ccoas.tls.tls_pair`) and write each service's files into
    ``out``, laid out and owned exactly as the local engine materialises them: one file per
    reader (``out/<service>/<secret>``, formatted for that reader where the plan says so), 0400,
    owned by the host uid the reader's container uid maps to (``owners``), because Compose
    bind-mounts file secrets and ignores their ``uid``/``gid``/``mode``.

    An existing set is kept (values live on in the stack's volumes): when every file is there
    nothing is written; a partial set is refused rather than half-replaced.
    """
    from ccoas.tls import tls_pair

    check_engine_can_reach(out, engine_uid)
    mounts = [(service, mount) for service in plan.services for mount in service.secrets]
    existing = [secret_file_in(out, s.name, m.secret) for s, m in mounts if _exists(secret_file_in(out, s.name, m.secret))]
    if existing and len(existing) == len(mounts):
        return []
    if existing:
        raise CcoasError(
            f"{out} holds {len(existing)} of the stack's {len(mounts)} secret files (e.g. {existing[0]}): refusing to mix "
            "old and new values; remove the directory (and the stack's volumes, which keep the old passwords) to start over"
        )
    values = {s.name: generate(s) for s in plan.secrets if s.generator not in TLS_GENERATORS}
    if any(s.generator in TLS_GENERATORS for s in plan.secrets):
        assert plan.tls is not None
        cert, key = tls_pair(plan.tls)  # one pair, so that certificate and key match
        values.update({s.name: cert if s.generator == "tls-cert" else key for s in plan.secrets if s.generator in TLS_GENERATORS})
    written = []
    for service, mount in mounts:
        value = values[mount.secret]
        if mount.format:
            value = mount.format.replace("{value}", value)
        path = secret_file_in(out, service.name, mount.secret)
        write_secret_file(out, path, value, mount.uid, mount.gid, owners)
        written.append(path)
    return sorted(written)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except PermissionError:  # a directory of the set that only its owner may traverse
        return True


def check_engine_can_reach(out: Path, engine_uid: int | None = None) -> None:
    """The rootless engine (the engine user) bind-mounts files from ``out``: it must be able to
    traverse every directory above it. ``/root`` (0700) is the usual trap."""
    if engine_uid is None:
        return
    for directory in reversed(out.absolute().parents):
        try:
            status = directory.stat()
        except FileNotFoundError:
            break
        if status.st_uid != engine_uid and not status.st_mode & 0o001:
            raise CcoasError(
                f"--out {out}: the engine user cannot traverse {directory} (mode {status.st_mode & 0o777:o}, not theirs), "
                "so the engine could not mount the secret files: choose a directory outside it, e.g. under /var/lib or /srv"
            )
