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


def test_every_process_of_a_multi_process_server_survives_sigkill(tmp_path: Path) -> None:
    """``lamina serve --processes 2`` killed whole (the supervisor, the writer and the reader
    at once, as a machine going down) in two cycles, one aimed at a snapshot. The harness
    writes through the reader's socket, so every write is forwarded to the writer, and every
    acknowledged write is read back after the restart (a reader that acknowledged a write
    without forwarding it fails this)."""
    lines: list[str] = []
    tally = crash.run(2, seed=2, workdir=tmp_path, log=lines.append, processes=2)
    assert tally.cycles == tally.kills == 2
    assert tally.acked_requests > 0 and tally.points_checked > 0
    assert tally.in_flight_applied + tally.in_flight_not_applied == 2
    assert sum(n for doing, n in tally.events.items() if "snapshot" in doing) >= 1
    print("\n".join(lines))
