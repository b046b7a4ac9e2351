"""How one device agent runs: what the command line gives, the settings fill in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgelake.contracts import EdgeInference
from edgelake.settings import Settings


@dataclass(frozen=True)
class AgentOptions:
    """How one agent runs; ``from_settings`` fills what the command line leaves out."""

    device_name: str
    state_dir: Path
    api_url: str
    enrollment_token: str
    model: str
    frames: str
    frame_offset: int
    fps: float
    max_frames: int | None
    heartbeat_s: float
    outbox_max: int
    forward_batch: int
    kafka_bootstrap_servers: str
    result_topic: str
    fashion_mnist_dir: Path
    registry_key: Path | None = None
    drain_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings, device_name: str, **overrides: object) -> AgentOptions:
        values: dict[str, object] = {
            "device_name": device_name,
            "state_dir": settings.edge_state_dir or settings.data_dir / "edge" / device_name,
            "api_url": settings.api_url,
            "enrollment_token": settings.edge_enrollment_token,
            "model": "vision",
            "frames": "fashion-mnist",
            "frame_offset": 0,
            "fps": settings.edge_frames_per_s,
            "max_frames": None,
            "heartbeat_s": settings.edge_heartbeat_s,
            "outbox_max": settings.edge_outbox_max,
            "forward_batch": settings.edge_forward_batch,
            "kafka_bootstrap_servers": settings.edge_kafka_bootstrap_servers,
            "result_topic": settings.topic(EdgeInference.topic),
            "fashion_mnist_dir": settings.fashion_mnist_dir,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]
