"""Three SIGKILL cycles of the crash harness (``python -m bench crash`` runs 20)."""

from __future__ import annotations

from pathlib import Path

from bench import crash


def test_server_survives_sigkill_at_random_moments(tmp_path: Path) -> None:
    lines: list[str] = []
    tally = crash.run(3, seed=1, workdir=tmp_path, log=lines.append)
    assert tally.cycles == tally.kills == 3
    assert tally.acked_requests > 0 and tally.points_checked > 0
    assert tally.in_flight_applied + tally.in_flight_not_applied == 3  # each kill interrupted a request
    print("\n".join(lines))
