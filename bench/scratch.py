"""A scratch world for one benchmark run, so the user's broker and lake stay out of the figures."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kafka import KafkaAdminClient

from edgelake.broker import EmbeddedBroker, bootstrap_servers, free_ports
from edgelake.contracts import EVENT_TYPES
from edgelake.settings import Settings


@contextmanager
def scratch_settings(settings: Settings) -> Iterator[Settings]:
    """``settings`` with fresh topics (created), a temporary lake and, where the embedded broker
    is used, a private Apache Kafka of the same size; everything is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="edgelake-bench-") as scratch:
        updates: dict[str, object] = {"lake_root": str(Path(scratch) / "lake"), "topic_prefix": f"bench-{uuid.uuid4().hex[:8]}-"}
        broker = None
        if settings.embedded_broker:
            nodes = settings.broker_count
            broker = EmbeddedBroker(free_ports(2 * nodes), Path(scratch) / "broker", settings.jars_path.resolve(), nodes)
            updates["kafka_bootstrap_servers"] = broker.start().bootstrap_servers
        bench_settings = settings.model_copy(update=updates)
        try:
            bootstrap_servers(bench_settings)
            yield bench_settings
        finally:
            if broker is not None:
                broker.stop()
            else:
                _delete_topics(bench_settings)


def _delete_topics(settings: Settings) -> None:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.delete_topics([settings.topic(event.topic) for event in EVENT_TYPES])
    except Exception:  # noqa: BLE001 - cleanup is best effort: a cluster may forbid deleting topics
        pass
    finally:
        admin.close()
