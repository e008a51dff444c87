"""Mutual TLS on coordinator links, over real sockets on 127.0.0.1, with trustme CAs.

The deployment CA is a ``trustme.CA``; instance certificates are issued from it with
``ambrosia.certs`` (trustme's own leaves carry only DNS/IP names, which name no instance:
that is one of the refused cases). A refused peer gets nothing (no ReplayFrom, so nothing
it sends is logged), and the instance keeps serving a real peer, whose calls still arrive
exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme
from coordinator_peers import ASYNC_EVERY, Peers, Recorder, Sender, forget

from ambrosia.backends import open_store
from ambrosia.binding.immortal import Immortal
from ambrosia.certs import CertificateAuthority, issue_instance_certificate, load_ca
from ambrosia.coordinator.runtime import Config, Runtime
from ambrosia.coordinator.tls import (
    TlsSettings,
    Transport,
    instance_named_by,
    is_loopback_host,
    load_contexts,
)
from ambrosia.errors import ConfigError, ProtocolError
from ambrosia.testing.workloads import expected_chain
from ambrosia.wire.messages import (
    PEER_PROTOCOL_VERSION,
    Direction,
    Hello,
    ReplayFrom,
    decode_message,
    encode,
)

TOTAL = 200
DEADLINE_S = 20.0  # only against hangs


class CertificateDirectory:
    """A trustme CA written out as an ``ambrosia certs`` directory; instances issued from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.trustme = trustme.CA()
        self.trustme.cert_pem.write_to_path(str(directory / "ca.crt"))
        self.trustme.private_key_pem.write_to_path(str(directory / "ca.key"))
        self.ca: CertificateAuthority = load_ca(directory)

    def issue(self, name: str, **validity: datetime.datetime) -> TlsSettings:
        return issue_instance_certificate(self.ca, self.directory, name, **validity)


class TlsPeers:
    """A Recorder ("server") and a Sender ("client") over mutual TLS, memory:// logs."""

    def __init__(self, certs: CertificateDirectory) -> None:
        self.certs = certs
        self.peers = Peers()
        self.store_name = uuid.uuid4().hex
        self.runtimes: dict[str, Runtime] = {}

    async def start(
        self, name: str, factory: Callable[[], Immortal], certificate_name: str | None = None
    ) -> Runtime:
        store = await open_store(f"memory://{self.store_name}", name)
        config = Config(tls=self.certs.issue(certificate_name or name))
        runtime = await self.peers.start(name, factory, store, config)
        self.runtimes[name] = runtime
        return runtime

    @property
    def port(self) -> int:
        return self.runtimes["server"].bound_port

    def recorder(self) -> Recorder:
        app = self.runtimes["server"].dispatcher.app  # type: ignore[union-attr]
        assert isinstance(app, Recorder)
        return app

    def sender(self) -> Sender:
        app = self.runtimes["client"].dispatcher.app  # type: ignore[union-attr]
        assert isinstance(app, Sender)
        return app

    async def run_calls(self, total: int) -> None:
        """Send 1..total from client to server and check they arrived exactly once."""
        self.sender().this.begin.impulse("server", total, 10)
        await wait_for(lambda: self.sender().done and self.recorder().count >= total, "the calls")
        recorder, sender = self.recorder(), self.sender()
        assert recorder.out_of_order == []
        assert recorder.count == total
        assert recorder.chain == expected_chain(range(1, total + 1))
        awaited = [n for n in range(1, total + 1) if n % ASYNC_EVERY == 0]
        assert sender.bad_results == []
        assert sender.result_chain == expected_chain(awaited)

    async def stop(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.stop()
        forget(self.store_name)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def certs(tmp_path: Path) -> CertificateDirectory:
    return CertificateDirectory(tmp_path / "certs")


@contextlib.asynccontextmanager
async def started_pair(certs: CertificateDirectory) -> AsyncIterator[TlsPeers]:
    peers = TlsPeers(certs)
    try:
        await peers.start("server", Recorder)
        await peers.start("client", Sender)
        yield peers
    finally:
        await peers.stop()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def raw_client(certs: CertificateDirectory, settings: TlsSettings | None) -> ssl.SSLContext:
    """A TLS client as an intruder (or a misconfigured peer) would build one: it trusts
    the deployment CA, so only its own certificate is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(certs.directory / "ca.crt"))
    if settings is not None:
        context.load_cert_chain(str(settings.certificate_path), str(settings.key_path))
    return context


def hello(sender: str) -> bytes:
    return encode(Hello(PEER_PROTOCOL_VERSION, sender, "server", 1, 0))


async def attempt(port: int, context: ssl.SSLContext, data: bytes) -> bytes:
    """Connect with ``context``, send ``data``; everything received until the server
    closes the connection (or the deadline passes, which fails the caller's assertion)."""
    received = b""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context), DEADLINE_S
        )
    except (ssl.SSLError, ConnectionError):
        return received  # refused during the handshake
    try:
        writer.write(data)
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), DEADLINE_S)
            if not chunk:
                return received
            received += chunk
    except (ssl.SSLError, ConnectionError):
        return received
    except TimeoutError:
        return received + b"<still open>"
    finally:
        writer.close()


def replay_from_in(data: bytes) -> bool:
    """Whether ``data`` is the admission answer (the one message a refused peer never gets)."""
    try:
        message = decode_message(data, Direction.COORDINATOR_TO_COORDINATOR)
    except ProtocolError:
        return False
    return isinstance(message, ReplayFrom)


# -- the right certificates -----------------------------------------------------------------


def test_calls_flow_exactly_once_over_mutual_tls(certs: CertificateDirectory) -> None:
    async def scenario() -> None:
        async with started_pair(certs) as pair:
            await pair.run_calls(TOTAL)
            incoming = pair.runtimes["server"].incoming["client"]
            assert incoming.peer_identity == "client"
            assert incoming.transport is not None
            assert incoming.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            link = pair.runtimes["client"].links["server"]
            assert link.protocol is not None and link.protocol.tls is not None
            assert pair.runtimes["server"].tls_required

    run(scenario)


# -- refused peers ----------------------------------------------------------------------------


def _no_certificate(certs: CertificateDirectory, tmp_path: Path) -> ssl.SSLContext:
    return raw_client(certs, None)


def _another_ca(certs: CertificateDirectory, tmp_path: Path) -> ssl.SSLContext:
    other = CertificateDirectory(tmp_path / "other-ca")
    return raw_client(certs, other.issue("client"))


def _expired(certs: CertificateDirectory, tmp_path: Path) -> ssl.SSLContext:
    now = datetime.datetime.now(datetime.UTC)
    settings = issue_instance_certificate(
        certs.ca,
        tmp_path / "expired",
        "client",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    return raw_client(certs, settings)


def _no_instance_named(certs: CertificateDirectory, tmp_path: Path) -> ssl.SSLContext:
    # Right CA, but a trustme leaf: a DNS name ("client"), no ambrosia:instance: URI.
    context = raw_client(certs, None)
    certs.trustme.issue_cert("client").configure_cert(context)
    return context


def _another_instance(certs: CertificateDirectory, tmp_path: Path) -> ssl.SSLContext:
    # A valid certificate for "mallory", whose Hello claims to be "client".
    return raw_client(certs, issue_instance_certificate(certs.ca, tmp_path / "m", "mallory"))


REFUSED = {
    "no client certificate": _no_certificate,
    "certificate from another CA": _another_ca,
    "expired certificate": _expired,
    "certificate naming no instance": _no_instance_named,
    "certificate for another instance": _another_instance,
}


def _refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and ("refused" in record.getMessage() or "closing connection" in record.getMessage())
    ]


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_peer_gets_nothing_and_a_good_peer_is_served(
    case: str, certs: CertificateDirectory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with started_pair(certs) as pair:
            context = REFUSED[case](certs, tmp_path)
            with caplog.at_level(logging.WARNING):
                received = await attempt(pair.port, context, hello("client"))
                async with asyncio.timeout(DEADLINE_S):
                    while not _refusal_lines(caplog):
                        await asyncio.sleep(0.01)
            # One line says why, with no traceback (an audit trail, not a crash).
            assert len(_refusal_lines(caplog)) == 1, caplog.text
            assert not any(record.exc_info for record in caplog.records), caplog.text
            assert not replay_from_in(received), (case, received)
            assert received == b"", (case, received)
            await pair.run_calls(TOTAL)
            # The only link admitted as "client" is the real client's.
            assert pair.runtimes["server"].incoming["client"].peer_identity == "client"
            # Again while the real peer is connected: refused, and the peer stays.
            again = REFUSED[case](certs, tmp_path / "again")
            received = await attempt(pair.port, again, hello("client"))
            assert received == b"", (case, received)
            assert pair.runtimes["server"].incoming["client"].peer_identity == "client"

    run(scenario)


def test_peer_identity_is_the_instance_its_certificate_names(
    certs: CertificateDirectory, tmp_path: Path
) -> None:
    """A certificate for "mallory" is mallory: admitted as mallory (registered) only."""

    async def scenario() -> None:
        async with started_pair(certs) as pair:
            pair.peers.registered.add("mallory")  # as registered in the catalog
            settings = issue_instance_certificate(certs.ca, tmp_path, "mallory")
            context = raw_client(certs, settings)
            reader, writer = await asyncio.open_connection("127.0.0.1", pair.port, ssl=context)
            try:
                writer.write(hello("mallory"))
                answer = await asyncio.wait_for(reader.read(65536), DEADLINE_S)
                assert replay_from_in(answer), answer
                assert pair.runtimes["server"].incoming["mallory"].peer_identity == "mallory"
            finally:
                writer.close()

    run(scenario)


def test_server_certificate_naming_another_instance_is_refused_by_the_client(
    certs: CertificateDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ambrosia.links")

    async def scenario() -> None:
        peers = TlsPeers(certs)
        try:
            # "server" listens with a certificate that names "imposter".
            server = await peers.start("server", Recorder, certificate_name="imposter")
            client = await peers.start("client", Sender)
            peers.sender().this.begin.impulse("server", 10, 10)
            await wait_for(
                lambda: "certificate names imposter" in caplog.text, "the client's refusal"
            )
            assert "dialled server" in caplog.text
            link = client.links["server"]
            assert link.protocol is None or not link.protocol.ready
            assert server.incoming == {}  # no Hello was ever sent to it
            assert peers.recorder().count == 0
        finally:
            await peers.stop()

    run(scenario)


# -- identity format and settings --------------------------------------------------------------


def test_identity_is_one_exact_uri() -> None:
    def certificate(*names: tuple[str, str]) -> dict[str, object]:
        return {"subjectAltName": names}

    assert instance_named_by(certificate(("URI", "ambrosia:instance:Client_1"))) == "Client_1"
    assert instance_named_by(None) is None
    assert instance_named_by(certificate(("DNS", "client"))) is None
    assert instance_named_by(certificate(("URI", "ambrosia:instance:*"))) is None
    two = certificate(("URI", "ambrosia:instance:a"), ("URI", "ambrosia:instance:b"))
    assert instance_named_by(two) is None


def test_unusable_files_are_config_errors(certs: CertificateDirectory, tmp_path: Path) -> None:
    good = certs.issue("server")
    load_contexts(good)
    with pytest.raises(ConfigError, match="does not exist"):
        load_contexts(TlsSettings(tmp_path / "missing.crt", good.key_path, good.ca_path))
    other = certs.issue("other")
    with pytest.raises(ConfigError, match="cannot be used together"):
        load_contexts(TlsSettings(good.certificate_path, other.key_path, good.ca_path))
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_contexts(TlsSettings(good.certificate_path, good.key_path, good.key_path))


def test_plaintext_only_when_chosen_and_on_loopback_unless_chosen_twice() -> None:
    with pytest.raises(ConfigError, match=r"--tls-cert.*--plaintext"):
        Transport().check("server", "127.0.0.1")
    Transport(plaintext=True).check("server", "127.0.0.1")
    Transport(plaintext=True).check("server", "::1")
    with pytest.raises(ConfigError, match="not a loopback address"):
        Transport(plaintext=True).check("server", "10.0.0.4")
    with pytest.raises(ConfigError, match=r"peer client is at 0\.0\.0\.0"):
        Transport(plaintext=True).check_peer("0.0.0.0", "peer client is at")
    Transport(plaintext=True, plaintext_beyond_loopback=True).check("server", "10.0.0.4")
    assert not is_loopback_host("example.com")
    assert is_loopback_host("localhost") and is_loopback_host("[::1]")
