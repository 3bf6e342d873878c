"""TLS material for nginx: the operator's certificate, or one ccoas generates for dev and ci.

A generated certificate is issued by the **stack CA**: a root kept in the stack's Vault (its
PKI secrets engine at :data:`CA_MOUNT`; the key is made there and never leaves it), valid
for 10 years, ``CA:true, pathlen:0``, with name constraints permitting only the stack's
domain and ``localhost``. The leaf (the domain, localhost, 127.0.0.1; EC P-256; 90 days)
is issued by ccoas's token through one role (:data:`LEAF_ROLE`) that allows those names
only, stored in Vault like every other secret and delivered to Nginx with the CA after it;
`up` issues a new one when less than 30 days are left, or when the delivered one is not
the stack CA's (a stack from before the CA, or a self-signed leaf). The CA stays, so the
trust an operator gives it (``ccoas tls trust``) survives every renewal.

Without a Vault (``ccoas render``'s secret files for Compose) a self-signed leaf is made.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ccoas.errors import CcoasError
from ccoas.plan import Tls


LEAF_DAYS = 90
CA_DAYS = 3650
CA_MOUNT = "ccoas-pki"
"""The stack Vault's PKI mount that holds the stack CA."""
LEAF_ROLE = "edge"
"""The one role of :data:`CA_MOUNT`: what a leaf may name (ccoas's token may issue through it)."""
LOOPBACK_IP = "127.0.0.1"


def dns_names(domain: str) -> list[str]:
    """The names a generated certificate carries (and the only ones the stack CA may sign)."""
    return [domain] if domain == "localhost" else [domain, "localhost"]


def ca_request(domain: str, stack: str) -> dict[str, object]:
    """``<CA_MOUNT>/root/generate/internal``: the stack CA, its key made inside Vault."""
    return {
        "common_name": f"ccoas stack CA {stack}",
        "organization": "ccoas",
        "ttl": f"{CA_DAYS * 24}h",
        "key_type": "ec",
        "key_bits": 256,
        "max_path_length": 0,
        "permitted_dns_domains": dns_names(domain),
    }


def leaf_role(domain: str) -> dict[str, object]:
    """``<CA_MOUNT>/roles/<LEAF_ROLE>``: server certificates for the stack's names only."""
    return {
        "allowed_domains": dns_names(domain),
        "allow_bare_domains": True,
        "allow_subdomains": False,
        "allow_glob_domains": False,
        "allow_localhost": True,
        "allow_ip_sans": True,
        "allow_wildcard_certificates": False,
        "enforce_hostnames": True,
        "server_flag": True,
        "client_flag": False,
        "key_type": "ec",
        "key_bits": 256,
        "key_usage": ["DigitalSignature"],
        "ttl": f"{LEAF_DAYS * 24}h",
        "max_ttl": f"{LEAF_DAYS * 24}h",
        "no_store": True,
    }


def leaf_request(domain: str) -> dict[str, object]:
    """``<CA_MOUNT>/issue/<LEAF_ROLE>`` (the common name is ``domain``)."""
    return {"alt_names": ",".join(dns_names(domain)[1:]), "ip_sans": LOOPBACK_IP, "private_key_format": "pkcs8"}


def chain(cert_pem: str, ca_pem: str) -> str:
    """What Nginx serves: the leaf, then the stack CA (a client that trusts the CA, or this file
    as its CA file, verifies the leaf)."""
    return cert_pem.strip() + "\n" + ca_pem.strip() + "\n"


def issued_by(cert_pem: str, ca_pem: str) -> bool:
    """The (first) certificate of ``cert_pem`` is signed by the key of ``ca_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def trust_instructions(ca_file: str, domain: str, port: int | None) -> list[str]:
    """How an operator trusts the stack CA (``ca_file`` holds what ``ccoas tls trust`` printed)."""
    url = f"https://{domain}" + (f":{port}" if port and port != 443 else "") + "/"
    return [
        f"save it (e.g. `ccoas tls trust ... > {ca_file}`); it stays the same across certificate renewals (10 years)",
        f"curl: curl --cacert {ca_file} {url}",
        f"Firefox: Settings > Privacy & Security > Certificates > View Certificates > Authorities > Import {ca_file}, "
        "tick 'Trust this CA to identify websites'",
        f"Chromium/Chrome: Settings > Privacy and security > Security > Manage certificates > Authorities > Import {ca_file} "
        f"(Linux, for every NSS program: certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n ccoas-{domain} -i {ca_file})",
        f"the system store (Debian): cp {ca_file} /usr/local/share/ca-certificates/ccoas-{domain}.crt && update-ca-certificates",
        f"it may sign only {', '.join(dns_names(domain))} (name constraints), never another site",
    ]


def generate_self_signed(domain: str, days: int = LEAF_DAYS) -> tuple[str, str]:
    """Return ``(cert_pem, key_pem)`` for ``domain`` (where there is no Vault to keep a CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccoas dev")])
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names(domain)]
    names.append(x509.IPAddress(ipaddress.ip_address(LOOPBACK_IP)))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


def load_supplied(tls: Tls) -> tuple[str, str]:
    """Read and check the operator's certificate and key (``tls.mode: supplied``)."""
    assert tls.cert_file and tls.key_file
    try:
        cert_pem = Path(tls.cert_file).read_text()
        key_pem = Path(tls.key_file).read_text()
    except OSError as exc:
        raise CcoasError(f"tls: cannot read the supplied certificate or key: {exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except ValueError as exc:
        raise CcoasError(f"tls: the supplied certificate or key is not valid PEM: {exc}") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise CcoasError(f"tls: {tls.key_file} is not the key of {tls.cert_file}")
    return cert_pem, key_pem


RENEW_WITHIN_DAYS = 30
"""`up` renews a generated certificate with less than this left; `ccoas check` warns."""
FAIL_WITHIN_DAYS = 14
"""`ccoas check` fails on a certificate (generated or supplied) with less than this left."""


def days_left(cert_pem: str, now: dt.datetime | None = None) -> float:
    """Days until the (first) certificate of ``cert_pem`` expires; negative once it has."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    now = now or dt.datetime.now(dt.timezone.utc)
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


def tls_pair(tls: Tls) -> tuple[str, str]:
    """A pair without a Vault: self-signed when generated (the stack CA lives in Vault)."""
    return generate_self_signed(tls.domain) if tls.mode == "generate" else load_supplied(tls)
