"""A deployment's private CA and its per-instance certificates (``ambrosia certs``).

Layout of a certificate directory::

    ca.crt          the deployment CA (give it to every instance: --tls-ca)
    ca.key          its private key, mode 0600: whoever holds it can mint any instance;
                    keep it off the machines that run instances once certificates exist
    NAME.crt        the certificate of instance NAME (--tls-cert)
    NAME.key        its private key, mode 0600 (--tls-key)

Instance certificates carry the identity ``ambrosia.coordinator.tls`` describes (one URI
subject alternative name ``ambrosia:instance:NAME``), are usable for both ends of a TLS
connection (a coordinator both listens and dials) and cannot sign other certificates.
Keys are ECDSA P-256: small, fast to handshake, and accepted by every OpenSSL in use.

Files are created with ``O_EXCL``, so nothing existing is overwritten unless asked
(``replace``), and keys are never written with looser permissions than 0600, not even
for an instant.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ambrosia.coordinator.tls import TlsSettings, identity_uri
from ambrosia.errors import ConfigError
from ambrosia.names import validate_instance_name

__all__ = [
    "CA_VALID_DAYS",
    "INSTANCE_VALID_DAYS",
    "CertificateAuthority",
    "create_ca",
    "issue_instance_certificate",
    "load_ca",
    "tls_settings_for",
]

CA_VALID_DAYS = 3650
INSTANCE_VALID_DAYS = 397
CA_CERTIFICATE_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
# Clocks of two machines disagree a little; a certificate valid from "now" on one machine
# would be "not yet valid" on the other for that long.
_CLOCK_SKEW_ALLOWANCE = datetime.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, mode)
    except FileExistsError:
        raise ConfigError(f"{path} exists; pass --replace to overwrite it") from None
    except OSError as error:
        raise ConfigError(f"cannot write {path}: {error}") from error
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), mode)  # a replaced file keeps its old mode otherwise
        file.write(data)


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(
    directory: Path, *, common_name: str = "ambrosia deployment CA", valid_days: int = CA_VALID_DAYS
) -> CertificateAuthority:
    """Create ``ca.crt`` and ``ca.key`` in ``directory`` (refused if they exist)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key first: a directory with a CA certificate but no key is useless.
    _write(directory / CA_KEY_FILE, _private_key_pem(key), 0o600, replace=False)
    _write(
        directory / CA_CERTIFICATE_FILE,
        certificate.public_bytes(serialization.Encoding.PEM),
        0o644,
        replace=False,
    )
    return CertificateAuthority(certificate, key)


def load_ca(directory: Path) -> CertificateAuthority:
    """The CA kept in ``directory`` (``ca.crt`` and ``ca.key``)."""
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_CERTIFICATE_FILE).read_bytes())
        key = serialization.load_pem_private_key(
            (directory / CA_KEY_FILE).read_bytes(), password=None
        )
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"cannot load the CA from {directory}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / CA_KEY_FILE} is not an EC private key")
    return CertificateAuthority(certificate, key)


def issue_instance_certificate(
    ca: CertificateAuthority,
    directory: Path,
    instance: str,
    *,
    valid_days: int = INSTANCE_VALID_DAYS,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    replace: bool = False,
) -> TlsSettings:
    """Write ``NAME.crt`` and ``NAME.key`` for ``instance``, signed by ``ca``.

    ``not_before``/``not_after`` override the validity period (tests use them to make
    expired certificates). Returns the paths as ``TlsSettings`` (with ``ca.crt`` beside).
    """
    validate_instance_name(instance)
    settings = tls_settings_for(directory, instance)
    if not replace:
        for path in (settings.key_path, settings.certificate_path):
            if path.exists():
                raise ConfigError(f"{path} exists; pass --replace to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    start = not_before or now - _CLOCK_SKEW_ALLOWANCE
    end = not_after or now + datetime.timedelta(days=valid_days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, instance)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(instance))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write(settings.key_path, _private_key_pem(key), 0o600, replace)
    _write(
        settings.certificate_path,
        certificate.public_bytes(serialization.Encoding.PEM),
        0o644,
        replace,
    )
    return settings


def tls_settings_for(directory: Path, instance: str) -> TlsSettings:
    """The paths ``ambrosia certs`` uses for ``instance`` in ``directory``."""
    return TlsSettings(
        certificate_path=directory / f"{instance}.crt",
        key_path=directory / f"{instance}.key",
        ca_path=directory / CA_CERTIFICATE_FILE,
    )
