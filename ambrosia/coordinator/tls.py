"""Mutual TLS between coordinators: settings, contexts, and who a certificate names.

Trust model
-----------
A deployment has its own private certificate authority (``ambrosia certs`` makes one). It
is the only thing either end of a link trusts: the system trust store is never loaded,
so a certificate from a public CA, however valid for some host name, opens nothing. Both
ends present a certificate (mutual TLS) and both verify the other's chain against the
deployment CA, including its validity period: an expired or not-yet-valid certificate
fails the handshake. TLS 1.3 is the minimum version; session tickets are off, so every
connection is authenticated from scratch by a full handshake.

Identity
--------
A coordinator's certificate names its instance in exactly one subject alternative name
of type URI::

    ambrosia:instance:NAME

where NAME is a valid instance name (``ambrosia.names.validate_instance_name``).
The name is compared as an exact string: no case folding, no wildcards, no host-name
rules, which is why it is not a DNS name (instance names may hold ``_`` and upper case,
which DNS matching would fold or refuse). A certificate with no such URI, or with two
(which would let one key act as two instances), names no instance and is refused. The
subject's common name and any DNS or IP names are ignored: they may be present for
humans and other tools, they grant nothing here.

What each side checks:

- The dialling side (``OutgoingLink``) runs the handshake over its own socket and then
  requires that the server's certificate names exactly the instance it dialled, before
  it sends Hello. Host names are not checked: the address comes from the catalog, the
  identity from the certificate, and the certificate is what cannot be forged.
- The listening side (``IncomingLink``) records the instance the client's certificate
  names as ``peer_identity``. Admission (``Runtime.accept_hello``) then lets that peer
  speak only as that instance, and only if it is registered in the catalog.

Plain TCP
---------
Plain TCP authenticates nobody: anyone who can reach the port can send a Hello naming any
instance. It is used only when chosen explicitly (``--plaintext``), and then only when
the listening address and every peer address are loopback, unless a second explicit
choice (``--plaintext-beyond-loopback``) says otherwise (``check_plaintext_address``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambrosia.errors import ConfigError, PeerIdentityError
from ambrosia.names import validate_instance_name

__all__ = [
    "IDENTITY_URI_PREFIX",
    "TlsContexts",
    "TlsSettings",
    "Transport",
    "check_plaintext_address",
    "client_handshake",
    "identity_uri",
    "instance_named_by",
    "is_loopback_host",
    "load_contexts",
]

logger = logging.getLogger("ambrosia.tls")

IDENTITY_URI_PREFIX = "ambrosia:instance:"
# One read of handshake bytes from the socket; a TLS record is at most ~16 KiB.
_HANDSHAKE_READ_BYTES = 1 << 16


def identity_uri(instance: str) -> str:
    """The URI subject alternative name that makes a certificate name ``instance``."""
    return IDENTITY_URI_PREFIX + validate_instance_name(instance)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where this instance's certificate, its private key and the deployment CA are (PEM).

    The key must not be encrypted: the process starts unattended.
    """

    certificate_path: Path
    key_path: Path
    ca_path: Path


@dataclass(frozen=True, slots=True)
class TlsContexts:
    """The two contexts of one instance: for the listener, and for dialling peers."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def load_contexts(settings: TlsSettings) -> TlsContexts:
    """Build both contexts from the files; ``ConfigError`` names a file that is unusable."""
    for what, path in (
        ("certificate", settings.certificate_path),
        ("private key", settings.key_path),
        ("CA certificate", settings.ca_path),
    ):
        if not path.is_file():
            raise ConfigError(f"TLS {what} {path} does not exist or is not a file")
    _warn_if_key_readable_by_others(settings.key_path)
    return TlsContexts(
        server=_context(ssl.PROTOCOL_TLS_SERVER, settings),
        client=_context(ssl.PROTOCOL_TLS_CLIENT, settings),
    )


def _context(protocol: int, settings: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # The identity is an instance name checked exactly after the handshake (see the module
    # docstring), not a host name; the chain is still verified against the CA.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # Stricter chain checks (RFC 5280 conformance of every certificate in it).
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if protocol == ssl.PROTOCOL_TLS_SERVER:
        # No resumption: every connection proves its key again.
        context.num_tickets = 0
    try:
        # Only the deployment CA: the system store is never loaded into this context.
        context.load_verify_locations(cafile=str(settings.ca_path))
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"TLS CA certificate {settings.ca_path} is not a PEM certificate: {error}"
        ) from error
    try:
        context.load_cert_chain(str(settings.certificate_path), str(settings.key_path))
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"TLS certificate {settings.certificate_path} and key {settings.key_path} "
            f"cannot be used together (not PEM, encrypted, or not a pair): {error}"
        ) from error
    return context


def _warn_if_key_readable_by_others(path: Path) -> None:
    # A warning, not a refusal: mounted secrets (e.g. Kubernetes) are often 0644 inside a
    # private volume, and refusing them would only teach people to copy keys around.
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("TLS private key %s is readable by other users (mode %o)", path, mode)


def instance_named_by(certificate: dict[str, Any] | None) -> str | None:
    """The instance a verified peer certificate names (``getpeercert()`` form), or None.

    None when there is no certificate, no ``ambrosia:instance:`` URI, more than one, or a
    name that is not a valid instance name.
    """
    if not certificate:
        return None
    named = [
        value[len(IDENTITY_URI_PREFIX) :]
        for kind, value in certificate.get("subjectAltName", ())
        if kind == "URI" and value.startswith(IDENTITY_URI_PREFIX)
    ]
    if len(named) != 1:
        return None
    try:
        return validate_instance_name(named[0])
    except ConfigError:
        return None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a literal address or ``localhost``) is on this machine only."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


@dataclass(frozen=True, slots=True)
class Transport:
    """How an instance's links are secured, as chosen by its settings.

    ``tls`` set: mutual TLS. Otherwise plain TCP, which must have been chosen
    (``plaintext``), and which stays on loopback unless ``plaintext_beyond_loopback``.
    Neither chosen is an error at start, never a silent default.
    """

    tls: TlsSettings | None = None
    plaintext: bool = False
    plaintext_beyond_loopback: bool = False

    def check(self, instance: str, listen_host: str) -> None:
        """Refuse to start without an explicit choice, or plain TCP off loopback."""
        if self.tls is not None:
            return
        if not self.plaintext:
            raise ConfigError(
                f"{instance}: links need mutual TLS: pass --tls-cert, --tls-key and --tls-ca "
                "(make them with `ambrosia certs`) or set [tls] in the deployment file; "
                "or pass --plaintext for unauthenticated plain TCP on loopback"
            )
        self.check_peer(listen_host, f"{instance} listens on")

    def check_peer(self, host: str, what: str) -> None:
        """Over plain TCP, refuse ``host`` unless loopback or allowed beyond it."""
        if self.tls is None:
            check_plaintext_address(host, what, beyond_loopback=self.plaintext_beyond_loopback)


def check_plaintext_address(host: str, what: str, *, beyond_loopback: bool) -> None:
    """Refuse plain TCP to or from ``host`` unless it is loopback or that was chosen too."""
    if beyond_loopback or is_loopback_host(host):
        return
    raise ConfigError(
        f"plain TCP: {what} {host}, which is not a loopback address; anyone who can reach "
        "it could act as any instance: use --tls-cert/--tls-key/--tls-ca, or add "
        "--plaintext-beyond-loopback to accept that"
    )


async def client_handshake(
    sock: socket.socket, context: ssl.SSLContext, expected: str
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """Run the client handshake over a connected non-blocking socket; check the identity.

    Returns the ``SSLObject`` with its incoming and outgoing ``MemoryBIO``: the caller
    keeps encrypting and decrypting through them on its own socket (see
    ``OutgoingConnection``). Raises ``PeerIdentityError`` when the server's certificate
    does not name ``expected``, ``ssl.SSLError`` when the handshake fails, ``OSError``
    when the socket does. The caller bounds the time.
    """
    loop = asyncio.get_running_loop()
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        if outgoing.pending:
            await loop.sock_sendall(sock, outgoing.read())
        received = await loop.sock_recv(sock, _HANDSHAKE_READ_BYTES)
        if not received:
            raise ConnectionResetError("peer closed the connection during the TLS handshake")
        incoming.write(received)
    # Checked before the last flight goes out: a server that is not the instance dialled
    # never receives this instance's certificate.
    named = instance_named_by(tls.getpeercert())
    if named != expected:
        raise PeerIdentityError(
            f"dialled {expected}, but its certificate names "
            f"{'no instance' if named is None else named}"
        )
    if outgoing.pending:
        # The client's certificate and Finished.
        await loop.sock_sendall(sock, outgoing.read())
    return tls, incoming, outgoing
