"""Store-and-forward through a real 60 s cloud outage: every result reaches the lake exactly once, checked by id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.compute as pc
from deltalake import DeltaTable
from kafka import KafkaProducer


from edgelake.control_db import ControlDb
from edgelake.api.devices import DeviceStore
from edgelake.edge.agent import STATUS
from edgelake.edge.outbox import Outbox
from edgelake.contracts import EdgeInference
from edgelake.kafka import read_topic
from edgelake.ingest.loop import IngestOptions, ingest
from edgelake.lake.tables import SILVER, table_uri
from tests.edge.conftest import Cloud, main_python, start_agent, wait_for

FPS = 10
FRAMES = 900
OUTAGE_S = 60


def test_results_made_while_the_cloud_is_unreachable_reach_the_lake_exactly_once(cloud: Cloud, vision_run, tmp_path: Path) -> None:
    cloud.publish(vision_run.files, vision_run.extra)
    device = tmp_path / "device"
    agent = start_agent(main_python(), cloud, "offline-1", device, "--fps", str(FPS), "--heartbeat-s", "1", "--max-frames", str(FRAMES))
    try:
        wait_for(lambda: _reported_delivered(device) >= 50, "the first results delivered", agent=agent)
        cloud.stop_api()
        outage_started = time.monotonic()
        queued_during = []
        while time.monotonic() - outage_started < OUTAGE_S:
            assert agent.process.poll() is None, "the agent must keep running while the cloud is away"
            queued_during.append(_queued(device))
            time.sleep(5)
        delivered_before_return = _delivered(cloud)
        cloud.start_api()
        summary = agent.finish(timeout_s=300)
    finally:
        agent.kill()

    # Frames kept coming and waited in the queue (at whatever pace a loaded machine allows: each result is fsynced).
    assert queued_during == sorted(queued_during) and queued_during[-1] - queued_during[0] >= 100, queued_during
    assert delivered_before_return < FRAMES
    assert summary["frames"] == FRAMES and summary["queued"] == 0 and summary["dropped"] == 0

    # A result delivered twice (an acknowledgement lost on the way back) is a duplicate on the topic, never in the lake.
    topic = cloud.settings.topic(EdgeInference.topic)
    records = [record for record in read_topic(cloud.settings.kafka_bootstrap_servers, topic)]
    producer = KafkaProducer(bootstrap_servers=cloud.settings.kafka_bootstrap_servers)
    for record in records[:25]:
        producer.send(topic, key=record.key, value=record.value)
    producer.flush()
    producer.close()

    ingest(cloud.settings, IngestOptions(topics=(EdgeInference.topic,)), once=True)
    silver = DeltaTable(table_uri(cloud.settings.lake_root, SILVER[EdgeInference.topic])).to_pyarrow_table()
    mine = silver.filter(pc.equal(silver["device_id"], summary["device_id"]))
    ids, frames = mine["event_id"].to_pylist(), mine["input_ref"].to_pylist()
    assert len(ids) == FRAMES and len(set(ids)) == FRAMES  # none lost, none twice
    assert sorted(frames) == [f"fashion-mnist/test/{n:05d}" for n in range(FRAMES)]  # one result per frame the camera gave


def test_a_device_that_reaches_kafka_publishes_there_and_the_api_forwards_nothing(cloud: Cloud, vision_run, tmp_path: Path) -> None:
    cloud.publish(vision_run.files, vision_run.extra)
    servers = cloud.settings.kafka_bootstrap_servers
    agent = start_agent(
        main_python(), cloud, "direct-1", tmp_path / "device", "--fps", "50", "--max-frames", "40",
        env={"EDGELAKE_EDGE_KAFKA_BOOTSTRAP_SERVERS": servers, "EDGELAKE_TOPIC_PREFIX": cloud.settings.topic_prefix},
    )
    summary = agent.finish()

    topic = cloud.settings.topic(EdgeInference.topic)
    results = [EdgeInference.parse(record.value) for record in read_topic(servers, topic)]
    ids = [result.event_id for result in results if result.device_id == summary["device_id"]]
    assert summary["delivered"] == 40 and len(ids) == 40 and len(set(ids)) == 40
    assert DeviceStore(ControlDb.from_settings(cloud.settings)).forwarded(ids) == set()  # none went through the API


def _reported_delivered(device: Path) -> int:
    """The results the agent counted as delivered in its last heartbeat (the topic cannot say while results keep arriving:
    reading it to its end waits for a pause)."""
    try:
        return json.loads((device / STATUS).read_bytes())["health"]["delivered"]
    except (OSError, ValueError, KeyError):
        return 0


def _delivered(cloud: Cloud) -> int:
    return sum(1 for _ in read_topic(cloud.settings.kafka_bootstrap_servers, cloud.settings.topic(EdgeInference.topic)))


def _queued(device: Path) -> int:
    outbox = Outbox(device / "outbox.sqlite", max_results=1)
    try:
        return len(outbox)
    finally:
        outbox.close()
