"""The store-and-forward queue on a real SQLite file: order, acknowledgement, a counted drop policy, durability across reopen."""

from __future__ import annotations

from pathlib import Path

from edgelake.edge.outbox import Outbox


def test_results_come_back_in_order_and_leave_only_when_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "q.sqlite", max_results=100)
    for n in range(5):
        assert outbox.put(f"id{n}", f"r{n}".encode()) == 0

    first = outbox.peek(3)
    assert [queued.event_id for queued in first] == ["id0", "id1", "id2"]
    assert [queued.event_id for queued in outbox.peek(3)] == ["id0", "id1", "id2"]  # a peek takes nothing

    outbox.acknowledge(first[-1].seq)
    assert [queued.payload for queued in outbox.peek(10)] == [b"r3", b"r4"] and len(outbox) == 2


def test_a_full_queue_drops_its_oldest_results_and_counts_them_across_reopens(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "q.sqlite", max_results=3)
    dropped = [outbox.put(f"id{n}", b"x") for n in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [queued.event_id for queued in outbox.peek(10)] == ["id2", "id3", "id4"]
    outbox.close()

    reopened = Outbox(tmp_path / "q.sqlite", max_results=3)
    assert reopened.dropped == 2 and len(reopened) == 3
    reopened.put("id5", b"x")
    assert reopened.dropped == 3 and [queued.event_id for queued in reopened.peek(10)] == ["id3", "id4", "id5"]
