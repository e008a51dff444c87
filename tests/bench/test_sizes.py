import itertools

import pytest

from ambrosia.bench.sizes import format_size, parse_size, parse_sizes


def test_range_is_powers_of_two_inclusive() -> None:
    sizes = parse_sizes("16..64K")
    assert sizes[0] == 16
    assert sizes[-1] == 65536
    assert len(sizes) == 13
    assert all(later == 2 * earlier for earlier, later in itertools.pairwise(sizes))


def test_list_with_units_sorted_and_distinct() -> None:
    assert parse_sizes("64K,16,1K") == [16, 1024, 65536]
    assert parse_sizes("1KiB, 1k,1024B") == [1024]
    assert parse_sizes("1M") == [1024 * 1024]
    assert parse_sizes("2MiB") == [2 * 1024 * 1024]


def test_range_and_list_mix() -> None:
    assert parse_sizes("16..64,1K") == [16, 32, 64, 1024]
    assert parse_sizes("32..32") == [32]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no sizes"),
        ("16,,32", "empty item"),
        ("16X", "unknown unit"),
        ("-4", "whole number"),
        ("1.5K", "whole number"),
        ("0", "at least 1 byte"),
        ("64K..16", "backwards"),
        ("..64K", "both ends"),
        ("16..", "both ends"),
        ("24..64K", "not a power of two"),
        ("16..100", "not a power of two"),
        ("8M", "above the limit"),
    ],
)
def test_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sizes(text)


def test_parse_size_single() -> None:
    assert parse_size(" 4 K ") == 4096


def test_format_size() -> None:
    assert format_size(16) == "16 B"
    assert format_size(1024) == "1 KiB"
    assert format_size(65536) == "64 KiB"
    assert format_size(1536 * 1024) == "1.5 MiB"
