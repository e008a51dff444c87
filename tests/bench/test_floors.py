import socket
import time
from pathlib import Path

import pytest

from ambrosia.bench import floors

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="needs /proc to find child processes"
)


def _floors_children() -> set[int]:
    """Children of this process (reaped ones excluded) that run the tcp side."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for pid in pids:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"ambrosia.bench.floors" in command:
                found.add(int(pid))
    return found


@needs_proc
def test_run_ping_end_to_end_in_two_processes() -> None:
    before = _floors_children()
    result = floors.run_ping(count=200, warmup=20, on_progress=lambda label, rate: None)
    assert result.system == "tcp"
    assert result.count == 200
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.p999_ms
    # Half the samples are at least the median, so the mean is at least half of it.
    assert result.mean_ms >= result.p50_ms / 2
    # A loopback echo takes microseconds; a second would mean something else was timed.
    assert result.p50_ms < 1000
    assert _floors_children() == before  # both children killed and reaped


def _receive(peer: socket.socket, size: int) -> bytes:
    reply = bytearray()
    while len(reply) < size:
        chunk = peer.recv(size - len(reply))
        assert chunk, "server closed the connection"
        reply += chunk
    return bytes(reply)


def _round_trip(peer: socket.socket, message: bytes) -> bytes:
    peer.sendall(message)
    return _receive(peer, len(message))


def test_server_echoes_whole_messages_only() -> None:
    with floors._child("serve", ["--size", "5"]) as server:
        port = int(server.read_event(floors.server_start_timeout_s)["port"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
            peer.sendall(b"abc")
            # Three of five bytes are not a message: nothing may come back yet.
            peer.settimeout(0.2)
            with pytest.raises(TimeoutError):
                peer.recv(16)
            peer.settimeout(5)
            peer.sendall(b"de")
            assert _receive(peer, 5) == b"abcde"
            assert _round_trip(peer, b"12345") == b"12345"
        # One connection after another, as each run makes a fresh client.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
            assert _round_trip(peer, b"vwxyz") == b"vwxyz"
        process = server.process
    assert process.returncode is not None  # killed and reaped on exit


def test_child_dying_early_names_exit_code_and_stderr() -> None:
    # A bound socket that does not listen: connecting to it is refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with (
            floors._child("client", ["--port", str(port), "--count", "1"]) as client,
            pytest.raises(RuntimeError) as raised,
        ):
            client.read_event(10)
    message = str(raised.value)
    assert f"tcp client process {client.process.pid} exited early" in message
    assert "exit code 1" in message
    assert "ConnectionRefusedError" in message


@needs_proc
def test_interrupt_stops_both_children() -> None:
    before = _floors_children()
    seen: list[set[int]] = []

    def interrupt(label: str, rate: float) -> None:
        seen.append(_floors_children() - before)
        raise KeyboardInterrupt

    started = time.monotonic()
    # Far more round trips than the first progress line needs (a quarter second).
    with pytest.raises(KeyboardInterrupt):
        floors.run_ping(count=10_000_000, warmup=0, on_progress=interrupt)
    assert time.monotonic() - started < 20
    assert len(seen) == 1 and len(seen[0]) == 2  # server and client were running
    assert _floors_children() == before  # killed and reaped, not left as zombies


@pytest.mark.parametrize(
    ("count", "warmup", "size", "match"),
    [(0, 0, 16, "count"), (1, -1, 16, "warm-up"), (1, 0, 0, "size")],
)
def test_bad_arguments_are_refused_before_starting(
    count: int, warmup: int, size: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        floors.run_ping(count=count, warmup=warmup, size=size, on_progress=lambda *_: None)
