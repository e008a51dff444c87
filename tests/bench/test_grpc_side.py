import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ambrosia.bench import grpc_side
from ambrosia.bench.grpc_side import Count, GrpcServer


def _protobuf_classes() -> tuple[type, type]:
    file = descriptor_pb2.FileDescriptorProto(name="bench_test.proto", package="t", syntax="proto3")
    payload = file.message_type.add(name="Payload")
    payload.field.add(name="data", number=1, type=12, label=1)  # bytes
    count = file.message_type.add(name="Count")
    count.field.add(name="messages", number=1, type=4, label=1)  # uint64
    count.field.add(name="payload_bytes", number=2, type=4, label=1)
    count.field.add(name="seconds", number=3, type=1, label=1)  # double
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Payload")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Count")),
    )


@pytest.mark.parametrize("size", [0, 1, 16, 127, 128, 300, 65536])
def test_payload_is_protobuf_wire_format(size: int) -> None:
    payload_class, _ = _protobuf_classes()
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert grpc_side.encode_payload(data) == payload_class(data=data).SerializeToString()
    assert grpc_side.decode_payload(payload_class(data=data).SerializeToString()) == data


def test_count_is_protobuf_wire_format() -> None:
    _, count_class = _protobuf_classes()
    count = Count(messages=300, payload_bytes=2**40, seconds=1.25)
    encoded = grpc_side.encode_count(count)
    assert (
        encoded == count_class(messages=300, payload_bytes=2**40, seconds=1.25).SerializeToString()
    )
    assert grpc_side.decode_count(encoded) == count
    assert grpc_side.decode_count(b"") == Count(0, 0, 0.0)


def test_malformed_messages_are_refused() -> None:
    with pytest.raises(ValueError, match="past the end"):
        grpc_side.decode_payload(b"\x0a\x05abc")
    with pytest.raises(ValueError, match="tag"):
        grpc_side.decode_payload(b"\x12\x01a")
    with pytest.raises(ValueError, match="truncated"):
        grpc_side.decode_count(b"\x08\x80")


async def _stream(port: int, size: int, seconds: float) -> Count:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.stream_unary(
            grpc_side.RECEIVE_METHOD,
            request_serializer=grpc_side.encode_payload,
            response_deserializer=grpc_side.decode_count,
        )
        return await grpc_side._stream_once(stub, size, seconds, None)


def test_server_counts_every_byte() -> None:
    with GrpcServer() as server:
        assert server.port > 0
        count = asyncio.run(_stream(server.port, 100, 0.3))
        process = server._child.process if server._child else None
    assert count.messages > 0
    assert count.payload_bytes == count.messages * 100
    assert count.seconds > 0  # what the server measured; how long is not a test
    assert process is not None and process.poll() is not None  # stopped on exit


def test_run_throughput_in_separate_processes() -> None:
    labels: list[str] = []
    points = grpc_side.run_throughput(
        [16, 4096],
        duration_s=0.5,
        warmup_s=0.1,
        on_progress=lambda label, rate: labels.append(label),
    )
    assert [point.size_bytes for point in points] == [16, 4096]
    for point in points:
        assert point.system == "grpc"
        assert point.messages > 0 and point.messages_per_second > 0
        assert point.megabytes_per_second == pytest.approx(
            point.messages_per_second * point.size_bytes / 1e6
        )
        assert point.seconds > 0
        assert point.messages_per_second == pytest.approx(point.messages / point.seconds)
    assert "grpc 16 B done" in labels


def test_run_ping() -> None:
    result = grpc_side.run_ping(count=300, warmup=20, on_progress=lambda label, rate: None)
    assert result.system == "grpc" and result.count == 300
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms <= result.p999_ms
    assert result.mean_ms > 0
