"""NASA Space Shuttle sensor readings (river's bundled Statlog Shuttle set), replayed as IoT readings.

49,097 samples of 9 sensor values; label 1 marks the anomalous (non-"Rad Flow") states.
The set has no device identity, so samples are dealt round-robin to ``devices`` simulated
shuttles, one reading per second per device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta

from edgelake.contracts import IoTReading



def readings(start: datetime, count: int | None = None, devices: int = 8) -> Iterator[IoTReading]:
    """The Shuttle samples in file order, with their anomaly label kept in ``anomaly``."""
    from river.datasets import Shuttle

    for index, (features, label) in enumerate(itertools.islice(Shuttle(), count)):
        yield IoTReading(
            event_id=f"shuttle-{index:06d}",
            event_time=start + timedelta(seconds=index // devices),
            device_id=f"shuttle-{index % devices:02d}",
            sensor="shuttle",
            values={name: float(value) for name, value in features.items()},
            anomaly=bool(label),
        )
