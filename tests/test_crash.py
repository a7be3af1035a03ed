"""Three SIGKILL cycles of the crash harness (``python -m bench crash`` runs 20): one kill
lands during a snapshot, one during a merge growing a segment's graph, snapshots restore,
and the writer must have run until each kill."""

from __future__ import annotations

from pathlib import Path

from bench import crash


def test_server_survives_sigkill_at_random_moments(tmp_path: Path) -> None:
    lines: list[str] = []
    tally = crash.run(3, seed=1, workdir=tmp_path, log=lines.append)
    assert tally.cycles == tally.kills == 3
    assert tally.acked_requests > 0 and tally.points_checked > 0
    # each kill interrupted a request (run() also fails if the writer stopped before the kill)
    assert tally.in_flight_applied + tally.in_flight_not_applied == 3
    assert sum(n for doing, n in tally.events.items() if "snapshot" in doing) >= 1  # cycle 2 aims at one
    # cycle 3 aims at a merge growing a graph: the old segments stay in force, leftovers are swept
    assert sum(n for doing, n in tally.events.items() if "graph growth" in doing) >= 1, tally.events
    assert (
        tally.snapshots_restored >= 2
    )  # cycles 2 and 3 restore a snapshot (cycle 2's aimed kill waits for one)
    print("\n".join(lines))
