"""Helpers for tests that need a broker or settings of their own."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from edgelake.kafka import ensure_topics
from edgelake.settings import Settings

REPO = Path(__file__).resolve().parents[1]
# Data sets are fetched once and kept between runs (gitignored).
DATASET_CACHE = Path(os.environ.get("EDGELAKE_TEST_CACHE", REPO / ".edgelake" / "cache"))


def isolated_settings(bootstrap_servers: str, data_dir: Path) -> Settings:
    """Settings on fresh topics of their own, so tests never see each other's events."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap_servers,
        data_dir=data_dir,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}-",
        lake_root=str(data_dir / "lake"),
    )
    ensure_topics(settings, bootstrap_servers)
    return settings
