"""TLS material for nginx: the operator's certificate, or one ccoas generates for dev and ci.

A generated certificate is self-signed for the stack's domain (and localhost,
127.0.0.1), valid for 90 days, with an EC P-256 key. It is stored in Vault like every
other secret, never in the rendered files; `up` renews it when less than 30 days are left.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ccoas.errors import CcoasError
from ccoas.plan import Tls


def generate_self_signed(domain: str, days: int = 90) -> tuple[str, str]:
    """Return ``(cert_pem, key_pem)`` for ``domain``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccoas dev")])
    names: list[x509.GeneralName] = [x509.DNSName(domain)]
    if domain != "localhost":
        names.append(x509.DNSName("localhost"))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
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
    return generate_self_signed(tls.domain) if tls.mode == "generate" else load_supplied(tls)
