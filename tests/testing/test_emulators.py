"""The emulators the tests start leave nothing behind once stopped."""

from __future__ import annotations

import sys

import pytest

from ambrosia.testing.emulators import EmulatorUnavailableError, _spawn, start_moto_server


def test_a_stopped_emulator_leaves_no_working_directory() -> None:
    try:
        moto = start_moto_server()
    except EmulatorUnavailableError as error:
        pytest.skip(f"moto unavailable: {error}")
    directory = moto.process.log_path.parent
    assert directory.is_dir()
    moto.stop()
    assert not moto.process.running()
    assert not directory.exists()


def test_an_emulator_that_exits_at_once_is_reported_with_its_log_and_cleaned_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("emulator")
    process = _spawn(
        "broken", [sys.executable, "-c", "print('no such option'); raise SystemExit(3)"], directory
    )
    with pytest.raises(EmulatorUnavailableError, match=r"(?s)exited with code 3.*no such option"):
        process.wait_ready([1], timeout_s=30)
    assert not directory.exists()
