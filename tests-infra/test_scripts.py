"""Behaviour of the shell helpers in scripts/lib.sh that the local stack relies on."""

import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "scripts" / "lib.sh"


def rotate(path, limit_mib):
    """Runs `rotate_log PATH` with LOG_ROTATE_MIB=limit_mib; True if it rotated."""
    run = subprocess.run(
        ["bash", "-c", 'source "$1" && rotate_log "$2"', "_", str(LIB), str(path)],
        env={"PATH": "/usr/bin:/bin", "LOG_ROTATE_MIB": str(limit_mib)},
        capture_output=True,
        text=True,
    )
    assert run.returncode in (0, 1), run.stderr
    return run.returncode == 0


def test_a_log_past_the_limit_is_moved_aside_replacing_the_one_before(tmp_path):
    log = tmp_path / "tickets.log"
    (tmp_path / "tickets.log.1").write_text("older\n")
    log.write_bytes(b"x" * (1024 * 1024 + 1))

    assert rotate(log, 1)
    assert not log.exists()
    assert (tmp_path / "tickets.log.1").stat().st_size == 1024 * 1024 + 1


def test_a_log_within_the_limit_or_missing_stays_where_it_is(tmp_path):
    log = tmp_path / "tickets.log"
    log.write_bytes(b"x" * (1024 * 1024))

    assert not rotate(log, 1)
    assert log.stat().st_size == 1024 * 1024
    assert not (tmp_path / "tickets.log.1").exists()
    assert not rotate(tmp_path / "missing.log", 1)
