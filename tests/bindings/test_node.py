"""The Node.js binding (``bindings/node``) against real coordinators and Python immortals.

The chain workload (``ambrosia.testing.workloads``) with its relay written in JavaScript:
the Python ``ChainClient`` (``ambrosia run client``) calls the Node relay ``relay-1``
(``node bindings/node/examples/chain_relay.mjs`` beside ``ambrosia coordinator relay-1``),
which passes every call on to the Python ``ChainServer`` (``ambrosia run server``): a fork
as a fork, an awaited call as an awaited call whose result it checks and returns to the
client. So Python calls Node and Node calls Python, fire and forget and awaited with
results, each through its own coordinator, over real loopback sockets. The relay also
sends itself impulses from a timer (heartbeats), logged between the calls.

Each immortal checks what it sees: the relay and the server saw exactly 1..N in order
(their hash chains must equal the chain of 1..N), the client got every awaited result
exactly once (its own chain). The crash test SIGKILLs the Node process, its coordinator,
both at once, and the Python processes, during the run, and checks the same outcome.

``node --test`` runs the binding's own unit tests from here, so the project's test
command runs them. Without ``node`` (Node.js 20 or later) these tests are skipped, loudly,
and fail in CI.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambrosia.binding.codec import decode_args, decode_value, encode_args
from ambrosia.binding.immortal import _default_method_id
from ambrosia.testing.harness import Deployment, free_port
from ambrosia.testing.skips import skip_unless_ci
from ambrosia.testing.workloads import expected_chain, is_async_call

BINDING_DIRECTORY = Path(__file__).resolve().parents[2] / "bindings" / "node"
RELAY_SCRIPT = BINDING_DIRECTORY / "examples" / "chain_relay.mjs"
NODE_MAJOR_MIN = 20
RELAY = "relay-1"
# Liveness limits only: generous, they catch a hung run, they measure nothing.
LIVENESS_S = 90.0
UNIT_TESTS_TIMEOUT_S = 120.0
# Lines of the Node binding's output that are failures wherever they appear.
NODE_FAILURE_MARKERS = (
    "binding stopped",
    "handler failed",
    "skipping the rest",
    "ignored:",
    "Error",
)


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        skip_unless_ci("node is not on PATH: the Node.js binding's tests need Node.js 20+")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    match = re.match(r"v(\d+)\.", version.stdout.strip())
    if match is None or int(match.group(1)) < NODE_MAJOR_MIN:
        skip_unless_ci(f"node {version.stdout.strip()} is too old: the binding needs Node.js 20+")
    return node


def test_the_node_binding_unit_tests_pass() -> None:
    node = node_executable()
    done = subprocess.run(
        [node, "--test", "test/"],
        cwd=BINDING_DIRECTORY,
        capture_output=True,
        text=True,
        timeout=UNIT_TESTS_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    passed = re.search(r"^# pass (\d+)$", done.stdout, re.MULTILINE)
    assert passed is not None and int(passed.group(1)) > 0, done.stdout[-3000:]
    assert re.search(r"^# fail 0$", done.stdout, re.MULTILINE), done.stdout[-3000:]


# Reads JSON lines of hex-encoded Python arguments; writes what the Node codec decodes
# them to, and the Node codec's own encoding of the same values (and the method ids).
_CODEC_SCRIPT = """
import { decodeArgs, encodeArgs, encodeValue } from './src/codec.js';
import { defaultMethodId } from './src/wire.js';
import { readFileSync } from 'node:fs';
const cases = JSON.parse(readFileSync(0, 'utf8'));
const out = cases.args.map((hex) => {
  const values = decodeArgs(Buffer.from(hex, 'hex'));
  const plain = values.map((v) => (Buffer.isBuffer(v) ? { bytes: v.toString('hex') } : v));
  return { values: plain, again: encodeArgs(values).toString('hex') };
});
const results = cases.results.map((v) => encodeValue(v).toString('hex'));
const raw = encodeValue(Buffer.from('00ff10', 'hex')).toString('hex');
const ids = cases.names.map((name) => defaultMethodId(name));
let refused = '';
try { decodeArgs(Buffer.from(cases.state, 'hex')); } catch (error) { refused = error.message; }
process.stdout.write(JSON.stringify({ out, results, raw, ids, refused }));
"""


def test_the_node_codec_reads_and_writes_what_the_python_codec_does() -> None:
    node = node_executable()
    python_args: list[tuple[Any, ...]] = [
        (),
        (1, -2, 3.5, "héllo", True, None),
        ((1 << 53) - 1, -(1 << 53) + 1),
        (b"\x00\x01raw",),
    ]
    encoded = [
        (b"\x00" + args[0]) if len(args) == 1 and type(args[0]) is bytes else encode_args(args)
        for args in python_args
    ]
    results: list[object] = [7, "text", None, [1, "a"], {"k": [True]}]
    names = ["record", "record_fork", "step", "a_much_longer_method_name_é"]
    cases = {
        "args": [data.hex() for data in encoded],
        "results": results,
        "names": names,
        "state": encode_args(((1, 2),)).hex(),  # a tuple: Python's state encoding
    }
    done = subprocess.run(
        [node, "--input-type=module", "-e", _CODEC_SCRIPT],
        cwd=BINDING_DIRECTORY,
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=UNIT_TESTS_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    for args, data, node_side in zip(python_args, encoded, seen["out"], strict=True):
        expected = [{"bytes": a.hex()} if type(a) is bytes else a for a in args]
        assert node_side["values"] == expected
        # Python reads what Node writes back to the same values.
        assert decode_args(bytes.fromhex(node_side["again"]), _no_proxies) == args
        assert bytes.fromhex(node_side["again"])[:1] == data[:1]
    for value, hex_value in zip(results, seen["results"], strict=True):
        assert decode_value(bytes.fromhex(hex_value), _no_proxies) == value
    assert decode_value(bytes.fromhex(seen["raw"]), _no_proxies) == b"\x00\xff\x10"
    assert seen["ids"] == [_default_method_id(name) for name in names]
    assert "Python state encoding" in seen["refused"]


def _no_proxies(type_path: str, name: str) -> object:
    raise AssertionError(f"no proxy expected, got {type_path} {name}")


class NodeRelay:
    """The Node side of the chain: ``ambrosia coordinator relay-1`` and the node process.

    The coordinator is a deployment process (label ``relay-1``); the binding process is
    started here (label ``relay-1-node`` for its log files). A binding whose coordinator
    died ends by itself (the coordinator closed its connection): expected only then.
    """

    def __init__(self, deployment: Deployment, node: str) -> None:
        self.deployment = deployment
        self.node = node
        self.receive_port = free_port()
        self.send_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.expect_exit = False

    def start_coordinator(self) -> None:
        self.deployment.start(
            RELAY,
            subcommand="coordinator",
            args=("--receive-port", str(self.receive_port), "--send-port", str(self.send_port)),
        )

    def start_binding(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with open(self.log_path(self.starts), "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.node,
                    str(RELAY_SCRIPT),
                    "--instance",
                    RELAY,
                    "--receive-port",
                    str(self.receive_port),
                    "--send-port",
                    str(self.send_port),
                ],
                env={**self.deployment.env, "AMBROSIA_CHAIN_NEXT_HOP": "server"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.expect_exit = False

    def log_path(self, run: int) -> Path:
        return self.deployment.directory / f"{RELAY}-node.{run}.log"

    def output(self) -> str:
        path = self.log_path(self.starts)
        return path.read_text(errors="replace") if path.exists() else ""

    def outputs(self) -> str:
        return "".join(
            self.log_path(run).read_text(errors="replace")
            for run in range(1, self.starts + 1)
            if self.log_path(run).exists()
        )

    def check(self) -> None:
        """Fail if the binding ended by itself while its coordinator lived."""
        process = self.process
        if process is None or process.poll() is None or self.expect_exit:
            return
        raise AssertionError(
            f"the node binding exited by itself with code {process.returncode}:\n"
            f"{self.output()[-3000:]}"
        )

    def kill_binding(self) -> None:
        process = self.process
        assert process is not None
        self.check()
        process.send_signal(signal.SIGKILL)
        process.wait()

    def kill_coordinator(self) -> None:
        """SIGKILL the coordinator; its binding then ends by itself (waited for here)."""
        self.expect_exit = True
        self.deployment.kill(RELAY)
        if self.process is not None:
            try:
                self.process.wait(LIVENESS_S)
            except subprocess.TimeoutExpired as error:
                raise AssertionError("the node binding outlived its coordinator") from error

    def stop(self) -> int | None:
        """SIGTERM the binding; its exit code (None if it never ran)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
        return process.returncode

    def findings(self) -> list[str]:
        return [
            line
            for line in self.outputs().splitlines()
            if any(marker in line for marker in NODE_FAILURE_MARKERS)
        ]


def status(deployment: Deployment, name: str) -> dict[str, object]:
    return deployment.status(name) or {}


def count_of(deployment: Deployment, name: str) -> int:
    value = status(deployment, name).get("count", 0)
    return value if isinstance(value, int) else 0


class Chain:
    """A deployment of client (Python) -> relay-1 (Node) -> server (Python)."""

    def __init__(self, directory: Path, node: str, total: int) -> None:
        self.total = total
        self.deployment = Deployment(
            directory,
            env={"AMBROSIA_CHAIN_TOTAL": str(total), "AMBROSIA_CHAIN_RELAYS": "1"},
            run_args=("--checkpoint-log-bytes", "16384"),
            strict_exits=True,
        )
        self.deployment.register("server", "ambrosia.testing.workloads:ChainServer")
        self.deployment.register("client", "ambrosia.testing.workloads:ChainClient")
        self.deployment.cli(
            "register",
            RELAY,
            "--address",
            f"127.0.0.1:{free_port()}",
            "--log",
            self.deployment.log_url,
        )
        self.relay = NodeRelay(self.deployment, node)

    def start(self) -> None:
        self.deployment.start("server")
        self.relay.start_coordinator()
        self.relay.start_binding()
        self.deployment.start("client")

    def wait_for(self, predicate: object, what: str) -> None:
        assert callable(predicate)

        def holds() -> bool:
            self.relay.check()
            return bool(predicate())

        # The relay's coordinator is expected to be down only while the test restarts it.
        self.deployment.wait_for(holds, LIVENESS_S, what)

    def finished(self) -> bool:
        client = status(self.deployment, "client")
        return (
            client.get("done") is True
            and count_of(self.deployment, "server") >= self.total
            and count_of(self.deployment, RELAY) >= self.total
        )

    def check_outcome(self) -> None:
        deployment = self.deployment
        chain = expected_chain(range(1, self.total + 1))
        for name in (RELAY, "server"):
            seen = status(deployment, name)
            assert seen.get("count") == self.total, (name, seen)
            assert seen.get("chain") == chain, (name, seen)
            assert seen.get("out_of_order") == [], (name, seen)
            assert seen.get("bad_results") == [], (name, seen)
        # The relay's own impulses (a timer's heartbeats) were logged and ran between calls.
        heartbeats = status(deployment, RELAY).get("heartbeats")
        assert isinstance(heartbeats, int) and heartbeats > 0, status(deployment, RELAY)
        awaited = [n for n in range(1, self.total + 1) if is_async_call(n)]
        client = status(deployment, "client")
        assert client.get("results") == len(awaited), client
        assert client.get("result_chain") == expected_chain(awaited), client
        assert client.get("bad_results") == [], client

    def stop(self) -> None:
        # The coordinator before its binding: a binding that goes first makes the
        # coordinator start a new life for the next one, and the stop would race it.
        codes = {
            "client": self.deployment.terminate("client"),
            RELAY: self.deployment.terminate(RELAY),
            "node": self.relay.stop(),
            "server": self.deployment.terminate("server"),
        }
        assert codes == {"client": 0, "node": 0, RELAY: 0, "server": 0}, (
            codes,
            self.relay.output()[-2000:],
        )
        assert self.deployment.log_findings() == []
        assert self.relay.findings() == []


@pytest.fixture
def chain_factory(tmp_path: Path) -> Iterator[list[Chain]]:
    chains: list[Chain] = []
    yield chains
    for chain in chains:
        chain.relay.stop()
        chain.deployment.stop_all()


def test_a_node_immortal_and_python_immortals_call_each_other(
    tmp_path: Path, chain_factory: list[Chain]
) -> None:
    chain = Chain(tmp_path, node_executable(), total=90)
    chain_factory.append(chain)
    chain.start()
    chain.wait_for(chain.finished, "the chain through the Node relay to finish")
    chain.check_outcome()
    assert "relay-1: primary" in chain.relay.output()
    chain.stop()


@pytest.mark.crash
def test_sigkill_on_either_side_keeps_every_call_exactly_once_in_order(
    tmp_path: Path, chain_factory: list[Chain]
) -> None:
    total = 300
    chain = Chain(tmp_path, node_executable(), total=total)
    chain_factory.append(chain)
    deployment = chain.deployment
    rng = random.Random(10)
    # Every process at least once: the node binding alone, its coordinator with the Python
    # client, the Python server, the node binding and its coordinator together; kill points
    # spread over the run. Python processes are slow to start: few kills keep this short.
    victims = [("node",), ("coordinator", "client"), ("server",), ("node", "coordinator")]
    points = sorted(rng.sample(range(total // 10, total * 9 // 10), len(victims)))
    chain.start()
    for point, victim in zip(points, victims, strict=True):
        chain.wait_for(
            lambda point=point: count_of(deployment, RELAY) >= point,
            f"the relay to see call {point}",
        )
        if "node" in victim and "coordinator" not in victim:
            chain.relay.kill_binding()
        if "coordinator" in victim:
            chain.relay.kill_coordinator()
        for name in ("client", "server"):
            if name in victim:
                deployment.kill(name)
        time.sleep(rng.uniform(0.0, 0.3))
        for name in ("client", "server"):
            if name in victim:
                deployment.start(name)
        if "coordinator" in victim:
            chain.relay.start_coordinator()
        if "node" in victim or "coordinator" in victim:
            chain.relay.start_binding()
        # The next kill only once every victim finished recovery.
        for name in victim:
            if name in ("client", "server"):
                chain.wait_for(
                    lambda name=name: ": primary (replayed" in deployment.output(name),
                    f"{name} to recover",
                )
            else:
                chain.wait_for(
                    lambda: "relay-1: primary" in chain.relay.output(), "the relay to recover"
                )
    chain.wait_for(chain.finished, "the chain to finish after the kills")
    chain.check_outcome()
    # A coordinator's kill restarts its binding too; each restart recovered from a checkpoint.
    assert chain.relay.starts == 1 + sum(1 for v in victims if {"node", "coordinator"} & set(v))
    assert chain.relay.outputs().count("checkpoint loaded") == chain.relay.starts - 1
    chain.stop()
