"""The signed model registry: publishing, verification against tampering, stages, keys and the CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgelake.signing import (
    MANIFEST,
    SIGNATURE,
    KeySet,
    KeySetRefused,
    KeySetRelease,
    TrustedKey,
    canonical_json,
    fingerprint,
    load_public_key,
    public_key_pem,
    sign,
    verify_files,
)
from edgelake.control_db import ControlDb
from edgelake.lake import catalog
from edgelake.settings import Settings
from edgelake.training import registry
from edgelake.training.registry import publishing

FRAUD_METRICS = {"auprc": 0.81, "roc_auc": 0.97, "recall_at_1pct_fpr": 0.74}
VISION_METRICS = {"accuracy": 0.9, "int8_accuracy": 0.89, "size_ratio": 3.9, "int8_agreement": 0.98}
ARTIFACTS = [
    "model.tflite",
    "metrics.json",
    "plots/roc.png",
    "saved_model/saved_model.pb",
    "saved_model/variables/variables.index",
]


@dataclass(frozen=True)
class Lake:
    """A lake and a data dir of their own, with the registry's signing key."""

    data_dir: Path
    lake_root: str
    models: registry.Registry
    key: Ed25519PrivateKey

    @property
    def root(self) -> Path:
        """The registry's folder."""
        return self.models.root

    @property
    def env(self) -> dict[str, str]:
        control = self.models.db.engine.url.render_as_string(hide_password=False)  # shared, like PostgreSQL, with any data dir
        return {"EDGELAKE_DATA_DIR": str(self.data_dir), "EDGELAKE_LAKE_ROOT": self.lake_root, "EDGELAKE_CONTROL_DB_URL": control}

    @property
    def lake(self) -> catalog.Lake:
        """The lake as the registry takes it."""
        return catalog.Lake(self.lake_root)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    data_dir, lake = tmp_path / "data", catalog.Lake(str(tmp_path / "lake"))
    key = registry.ensure_signing_key(data_dir / registry.KEYS_DIR, lake)
    control = ControlDb.from_settings(Settings(data_dir=data_dir, lake_root=lake.root))
    return Lake(data_dir, lake.root, registry.Registry.of(lake, control), key)


def artifacts(directory: Path, seed: bytes) -> dict[str, Path]:
    """Small but real files like a training run leaves: a .tflite, metrics JSON, a plot and a SavedModel directory."""
    directory.mkdir(parents=True)
    (directory / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + seed * 40)
    (directory / "metrics.json").write_text(json.dumps({"seed": seed.decode(), **FRAUD_METRICS}))
    (directory / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + seed * 30)
    (directory / "saved_model" / "variables").mkdir(parents=True)
    (directory / "saved_model" / "saved_model.pb").write_bytes(b"\x08\x01" + seed * 20)
    (directory / "saved_model" / "variables" / "variables.index").write_bytes(seed * 10)
    return {
        "model.tflite": directory / "model.tflite",
        "metrics.json": directory / "metrics.json",
        "plots/roc.png": directory / "roc.png",
        "saved_model": directory / "saved_model",
    }


def publish(lake: Lake, tmp_path: Path, seed: str, name: str = "fraud", **changes: object) -> registry.ModelVersion:
    arguments: dict[str, object] = {
        "metrics": FRAUD_METRICS, "lineage": {"silver_transactions": 7, "silver_fraud_labels": 3},
        "feature_version": "card-features-v1", "extra": {"threshold": 0.5}, "signer": lake.key, **changes,
    }
    return registry.publish(lake.models, name, artifacts(tmp_path / f"run-{name}-{seed}", seed.encode()), **arguments)  # type: ignore[arg-type]


@pytest.fixture
def published(lake: Lake, tmp_path: Path) -> Lake:
    """Two versions of ``fraud`` with different artifacts."""
    publish(lake, tmp_path, "a")
    publish(lake, tmp_path, "b")
    return lake


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def version_dir(lake: Lake, version: int, name: str = "fraud") -> Path:
    return lake.root / name / str(version)


# --- publishing ---------------------------------------------------------------------------------


def test_publish_numbers_versions_and_registers_them_as_candidates(published: Lake, tmp_path: Path) -> None:
    assert registry.versions(published.models, "fraud") == {1: "candidate", 2: "candidate"}
    model = registry.get(published.models, "fraud", 2)
    assert sorted(model.manifest.files) == sorted(ARTIFACTS)
    for name, entry in model.manifest.files.items():
        content = (model.path / name).read_bytes()
        assert entry.sha256 == hashlib.sha256(content).hexdigest() and entry.bytes == len(content)
    assert (model.path / "model.tflite").read_bytes() == (tmp_path / "run-fraud-b" / "model.tflite").read_bytes()
    assert model.manifest.metrics == FRAUD_METRICS
    assert model.manifest.lineage == {"silver_transactions": 7, "silver_fraud_labels": 3}
    assert (model.manifest.feature_version, model.manifest.extra) == ("card-features-v1", {"threshold": 0.5})
    assert registry.models(published.models) == ["fraud"]


def test_the_manifest_is_canonical_json_signed_over_its_exact_bytes(published: Lake) -> None:
    raw = (version_dir(published, 1) / MANIFEST).read_bytes()
    assert canonical_json(json.loads(raw)) == raw
    signature = base64.b64decode((version_dir(published, 1) / SIGNATURE).read_bytes())
    published.key.public_key().verify(signature, raw)  # raises when it does not verify
    assert json.loads(raw)["key_fingerprint"] == fingerprint(published.key.public_key())
    assert (published.root / registry.PUBLIC_KEY).read_bytes() == public_key_pem(published.key.public_key())


def test_concurrent_publishers_get_distinct_versions(lake: Lake, tmp_path: Path) -> None:
    count = 8
    sources = [artifacts(tmp_path / f"run-{i}", str(i).encode()) for i in range(count)]
    start = threading.Barrier(count)
    results: list[int] = []

    def publisher(files: dict[str, Path]) -> None:
        start.wait()
        results.append(registry.publish(lake.models, "fraud", files, metrics={}, lineage={}, signer=lake.key).version)

    threads = [threading.Thread(target=publisher, args=(files,)) for files in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, count + 1))
    assert registry.versions(lake.models, "fraud") == {v: "candidate" for v in range(1, count + 1)}
    assert all(registry.verify(lake.models, "fraud", v) == [] for v in results)
    book = registry.read_book(lake.models, "fraud")
    assert sorted(t.version for t in book.history) == list(range(1, count + 1))


def test_a_number_reserved_by_a_publisher_that_died_stays_unused_and_unlisted(published: Lake, tmp_path: Path) -> None:
    assert publishing._reserve(published.models, "fraud") == 3  # a publisher that reserved 3, then died
    (published.root / "fraud" / "3").mkdir()
    (published.root / "fraud" / "3" / "model.tflite").write_bytes(b"half")  # and the file it got to write
    model = publish(published, tmp_path, "c")
    assert model.version == model.manifest.version == 4
    assert registry.versions(published.models, "fraud") == {1: "candidate", 2: "candidate", 4: "candidate"}
    with pytest.raises(registry.UnknownModel, match="has versions 1, 2, 4; not 3"):
        registry.get(published.models, "fraud", 3)


def test_files_where_a_reserved_version_goes_send_the_publisher_to_the_next_number(published: Lake, tmp_path: Path) -> None:
    (published.root / "fraud" / "3").mkdir()  # left by a publisher whose control-plane database was since reset
    model = publish(published, tmp_path, "c")
    assert model.version == model.manifest.version == 4
    assert [registry.verify(published.models, "fraud", v) for v in (1, 2, 4)] == [[], [], []]
    assert list(registry.versions(published.models, "fraud")) == [1, 2, 4]


def test_a_failed_publish_leaves_nothing_behind(published: Lake, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"artifact 'model\.tflite'"):
        registry.publish(
            published.models, "fraud", {"a.bin": artifacts(tmp_path / "x", b"x")["metrics.json"], "model.tflite": tmp_path / "gone"},
            metrics={}, lineage={}, signer=published.key,
        )
    assert registry.versions(published.models, "fraud") == {1: "candidate", 2: "candidate"}
    assert sorted(path.name for path in (published.root / "fraud").iterdir()) == ["1", "2"]


@pytest.mark.parametrize(
    ("name", "files", "message"),
    [
        ("Fraud!", {"m": "metrics.json"}, "not a model name"),
        ("fraud", {"manifest.json": "metrics.json"}, "reserved"),
        ("fraud", {"../escape": "metrics.json"}, "not an artifact name"),
        ("fraud", {".hidden": "metrics.json"}, "not an artifact name"),
    ],
)
def test_publish_refuses_bad_names(lake: Lake, tmp_path: Path, name: str, files: dict[str, str], message: str) -> None:
    sources = artifacts(tmp_path / "run", b"a")
    with pytest.raises(ValueError, match=message):
        registry.publish(lake.models, name, {k: sources[v] for k, v in files.items()}, metrics={}, lineage={}, signer=lake.key)
    assert registry.models(lake.models) == []


def test_publish_refuses_a_signer_other_than_the_registrys(published: Lake, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="this registry is signed by key"):
        publish(published, tmp_path, "c", signer=Ed25519PrivateKey.generate())
    assert list(registry.versions(published.models, "fraud")) == [1, 2]


def test_a_lake_on_object_storage_keeps_its_registry_there_read_through_a_local_mirror(tmp_path: Path) -> None:
    control = ControlDb(f"sqlite:///{tmp_path / 'control.sqlite'}")
    assert registry.registry_root(catalog.Lake(f"file://{tmp_path}/lake")) == tmp_path / "lake" / "models"
    with pytest.raises(ValueError, match="needs a local folder for its mirror"):
        registry.registry_root(catalog.Lake("s3://bucket/lake"))
    on_s3 = registry.Registry.of(catalog.Lake("s3://bucket/lake/", registry_mirror=tmp_path / "mirror"), control)
    assert (on_s3.root, on_s3.store and on_s3.store.uri, on_s3.location) == (tmp_path / "mirror", "s3://bucket/lake/models", "s3://bucket/lake/models")
    in_a_folder = registry.Registry.of(catalog.Lake("s3://bucket/lake", registry_dir=tmp_path / "registry"), control)
    assert (in_a_folder.root, in_a_folder.store) == (tmp_path / "registry", None)
    with pytest.raises(ValueError, match="cannot use: set registry_dir"):
        registry.Registry.of(catalog.Lake("gs://bucket/lake", registry_mirror=tmp_path / "mirror"), control)


# --- keys ---------------------------------------------------------------------------------------


def test_the_signing_key_is_private_to_the_data_dir_and_stable(published: Lake) -> None:
    key_file = published.data_dir / registry.KEYS_DIR / registry.PRIVATE_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not key_file.resolve().is_relative_to(Path(published.lake_root).resolve())
    again = registry.ensure_signing_key(published.data_dir / registry.KEYS_DIR, published.lake)
    assert fingerprint(again.public_key()) == fingerprint(published.key.public_key())
    lake_files = [path for path in Path(published.lake_root).rglob("*") if path.is_file()]
    assert lake_files and not any(b"PRIVATE KEY" in path.read_bytes() for path in lake_files)


def test_a_key_dir_inside_the_lake_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the lake"):
        registry.ensure_signing_key(tmp_path / "lake" / "keys", catalog.Lake(str(tmp_path / "lake")))
    assert not (tmp_path / "lake").exists()


def test_a_key_dir_inside_a_registry_of_its_own_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the model registry"):
        registry.ensure_signing_key(tmp_path / "registry" / "keys", catalog.Lake("s3://bucket/lake", registry_dir=tmp_path / "registry"))
    assert not (tmp_path / "registry").exists()


# --- verification -------------------------------------------------------------------------------


def test_intact_versions_verify_with_the_pinned_key_and_by_default(published: Lake) -> None:
    pinned = load_public_key(public_key_pem(published.key.public_key()))
    assert [registry.verify(published.models, "fraud", v, pinned) for v in (1, 2)] == [[], []]
    assert registry.verify(published.models, "fraud", 2) == []


@pytest.mark.parametrize("file", [MANIFEST, SIGNATURE, *ARTIFACTS])
def test_a_flipped_byte_in_any_file_is_detected(published: Lake, file: str) -> None:
    flip_byte(version_dir(published, 2) / file)
    problems = registry.verify(published.models, "fraud", 2, published.key.public_key())
    if file in (MANIFEST, SIGNATURE):
        assert any(problem.startswith(f"{SIGNATURE} is not a valid signature") for problem in problems), problems
    else:
        assert problems == [f"{file}: sha256 differs from the manifest"]
    assert registry.verify(published.models, "fraud", 1, published.key.public_key()) == []


def test_a_signature_by_another_key_is_detected(published: Lake) -> None:
    directory = version_dir(published, 2)
    (directory / SIGNATURE).write_bytes(sign((directory / MANIFEST).read_bytes(), Ed25519PrivateKey.generate()))
    trusted = fingerprint(published.key.public_key())[:16]
    problems = registry.verify(published.models, "fraud", 2, published.key.public_key())
    assert problems == [f"{SIGNATURE} is not a valid signature of {MANIFEST} by the trusted key {trusted}"]


def test_a_version_re_signed_consistently_by_another_key_fails_against_the_pinned_key(published: Lake) -> None:
    intruder = Ed25519PrivateKey.generate()
    directory = version_dir(published, 2)
    manifest = {**json.loads((directory / MANIFEST).read_bytes()), "key_fingerprint": fingerprint(intruder.public_key())}
    (directory / MANIFEST).write_bytes(canonical_json(manifest))
    (directory / SIGNATURE).write_bytes(sign(canonical_json(manifest), intruder))
    assert verify_files(directory, intruder.public_key()) == []  # consistent in itself...
    problems = registry.verify(published.models, "fraud", 2, published.key.public_key())
    assert len(problems) == 2 and "names signing key" in problems[1]  # ...but not by the pinned key


@pytest.mark.parametrize(
    "truncate",
    [
        pytest.param(lambda sig: sig[:-6], id="base64-text"),
        pytest.param(lambda sig: base64.b64encode(base64.b64decode(sig)[:-1]), id="signature-bytes"),
        pytest.param(lambda sig: b"", id="empty"),
    ],
)
def test_a_truncated_signature_is_detected(published: Lake, truncate: Callable[[bytes], bytes]) -> None:
    path = version_dir(published, 1) / SIGNATURE
    path.write_bytes(truncate(path.read_bytes()))
    problems = registry.verify(published.models, "fraud", 1)
    assert len(problems) == 1 and problems[0].startswith(f"{SIGNATURE} is not a valid signature")


def test_a_missing_signature_is_detected(published: Lake) -> None:
    (version_dir(published, 1) / SIGNATURE).unlink()
    assert registry.verify(published.models, "fraud", 1) == [f"{SIGNATURE} is missing"]


@pytest.mark.parametrize("extra", ["extra.bin", "saved_model/assets/vocab.txt"])
def test_an_unexpected_file_is_detected(published: Lake, extra: str) -> None:
    path = version_dir(published, 1) / extra
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"smuggled")
    assert registry.verify(published.models, "fraud", 1) == [f"{extra}: not in the manifest"]


def test_a_missing_file_is_detected(published: Lake) -> None:
    (version_dir(published, 1) / "plots" / "roc.png").unlink()
    assert registry.verify(published.models, "fraud", 1) == ["plots/roc.png: missing"]


def test_a_changed_size_is_detected(published: Lake) -> None:
    with (version_dir(published, 1) / "model.tflite").open("ab") as file:
        file.write(b"\x00")
    problems = registry.verify(published.models, "fraud", 1)
    assert len(problems) == 1 and problems[0].startswith("model.tflite: ") and "the manifest says" in problems[0]


def test_a_signed_manifest_that_does_not_parse_is_detected(published: Lake) -> None:
    directory = version_dir(published, 1)
    bad = canonical_json({"name": "fraud", "version": "one"})
    (directory / MANIFEST).write_bytes(bad)
    (directory / SIGNATURE).write_bytes(sign(bad, published.key))
    problems = registry.verify(published.models, "fraud", 1)
    assert len(problems) == 1 and problems[0].startswith(f"{MANIFEST} does not parse")


def test_a_manifest_replayed_from_another_version_is_detected(published: Lake) -> None:
    for file in (MANIFEST, SIGNATURE):
        shutil.copyfile(version_dir(published, 1) / file, version_dir(published, 2) / file)
    problems = registry.verify(published.models, "fraud", 2)
    assert f"{MANIFEST} is for version 1, not 2" in problems
    assert "model.tflite: sha256 differs from the manifest" in problems


def test_a_downloaded_copy_verifies_with_the_pinned_key_alone(published: Lake, tmp_path: Path) -> None:
    download = shutil.copytree(version_dir(published, 2), tmp_path / "device" / "fraud-2")
    pinned = load_public_key(public_key_pem(published.key.public_key()))
    assert verify_files(download, pinned, name="fraud", version=2) == []
    assert verify_files(download, pinned, name="vision", version=2) == [f"{MANIFEST} is for model 'fraud', not 'vision'"]


def test_verification_imports_nothing_heavy() -> None:
    heavy = ["training", "tensorflow", "deltalake", "pyarrow", "pyspark", "apache_beam", "pandas"]
    code = f"import sys, edgelake.signing; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- stages -------------------------------------------------------------------------------------


def test_promotion_goes_candidate_canary_production_and_archives_what_it_replaces(published: Lake) -> None:
    models = published.models
    assert [(t.from_, t.to) for t in registry.promote(models, "fraud", 1)] == [("candidate", "canary")]
    assert [(t.from_, t.to) for t in registry.promote(models, "fraud", 1)] == [("canary", "production")]
    assert registry.current(models, "fraud") == 1
    registry.promote(models, "fraud", 2, "canary", actor="ci", reason="auprc up")
    assert registry.current(models, "fraud", "canary") == 2
    transitions = registry.promote(models, "fraud", 2, "production")
    assert [(t.version, t.from_, t.to) for t in transitions] == [(1, "production", "archived"), (2, "canary", "production")]
    assert registry.versions(models, "fraud") == {1: "archived", 2: "production"}
    history = registry.read_book(models, "fraud").history
    assert [(t.version, t.from_, t.to) for t in history] == [
        (1, None, "candidate"), (2, None, "candidate"), (1, "candidate", "canary"), (1, "canary", "production"),
        (2, "candidate", "canary"), (1, "production", "archived"), (2, "canary", "production"),
    ]
    assert (history[4].actor, history[4].reason) == ("ci", "auprc up")


def test_a_new_canary_archives_the_previous_canary(published: Lake) -> None:
    registry.promote(published.models, "fraud", 1)
    registry.promote(published.models, "fraud", 2)
    assert registry.versions(published.models, "fraud") == {1: "archived", 2: "canary"}


def test_concurrent_promotions_keep_one_canary_and_every_transition(lake: Lake, tmp_path: Path) -> None:
    count = 8
    for i in range(count):
        publish(lake, tmp_path, str(i))
    start = threading.Barrier(count)

    def promoter(version: int) -> None:
        start.wait()
        registry.promote(lake.models, "fraud", version)

    threads = [threading.Thread(target=promoter, args=(v,)) for v in range(1, count + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(registry.versions(lake.models, "fraud").values()) == ["archived"] * (count - 1) + ["canary"]
    history = registry.read_book(lake.models, "fraud").history
    assert len(history) == count + count + (count - 1)  # published, promoted, archived by the next canary


def test_rollback_restores_the_previous_production_version(published: Lake, tmp_path: Path) -> None:
    models = published.models
    publish(published, tmp_path, "c")
    for version in (1, 2, 3):
        registry.promote(models, "fraud", version, "production")
    transitions = registry.rollback(models, "fraud", reason="auprc dropped")
    assert [(t.version, t.to) for t in transitions] == [(3, "rolled_back"), (2, "production")]
    registry.rollback(models, "fraud")
    assert registry.versions(models, "fraud") == {1: "production", 2: "rolled_back", 3: "rolled_back"}
    with pytest.raises(LookupError, match="no earlier production version"):
        registry.rollback(models, "fraud")
    assert registry.current(models, "fraud") == 1


def test_rollback_needs_a_production_version(published: Lake) -> None:
    with pytest.raises(LookupError, match="no production version"):
        registry.rollback(published.models, "fraud")


@pytest.mark.parametrize(
    ("setup", "version", "to", "message"),
    [
        ([], 1, "candidate", "cannot promote fraud v1 from candidate to candidate"),
        ([], 1, "prod", "cannot promote fraud v1 from candidate to prod"),
        ([(1, "canary")], 1, "canary", "from canary to canary"),
        ([(1, "production")], 1, "canary", "v1 is production"),
        ([(1, "production"), (2, "production")], 1, "production", "use `rollback`"),
        ([(1, "production"), (2, "production"), ("rollback", None)], 2, "production", "v2 is rolled_back"),
    ],
)
def test_illegal_transitions_are_refused(
    published: Lake, setup: list[tuple[object, str | None]], version: int, to: str, message: str
) -> None:
    for step, stage in setup:
        registry.rollback(published.models, "fraud") if step == "rollback" else registry.promote(published.models, "fraud", step, stage)  # type: ignore[arg-type]
    before = registry.versions(published.models, "fraud")
    with pytest.raises(ValueError, match=message):
        registry.promote(published.models, "fraud", version, to)
    assert registry.versions(published.models, "fraud") == before


def test_a_version_that_fails_verification_is_not_promoted_or_rolled_back_to(published: Lake) -> None:
    models = published.models
    flip_byte(version_dir(published, 2) / "model.tflite")
    with pytest.raises(ValueError, match=r"refusing to promote fraud v2: it fails verification: model\.tflite"):
        registry.promote(models, "fraud", 2)
    assert registry.versions(models, "fraud")[2] == "candidate"
    flip_byte(version_dir(published, 2) / "model.tflite")
    registry.promote(models, "fraud", 1, "production")
    registry.promote(models, "fraud", 2, "production")
    flip_byte(version_dir(published, 1) / "plots" / "roc.png")
    with pytest.raises(ValueError, match="refusing to roll back to fraud v1"):
        registry.rollback(models, "fraud")
    assert registry.current(models, "fraud") == 2


def test_current_does_not_fall_back_but_get_shows_production_else_newest(published: Lake) -> None:
    assert registry.current(published.models, "fraud") is None
    assert registry.get(published.models, "fraud").version == 2
    registry.promote(published.models, "fraud", 1, "production")
    assert registry.get(published.models, "fraud").version == 1


def test_unknown_models_and_versions_are_lookup_errors(published: Lake) -> None:
    with pytest.raises(LookupError, match=r"no model 'vision'.*models: fraud"):
        registry.versions(published.models, "vision")
    with pytest.raises(LookupError, match="has versions 1, 2; not 9"):
        registry.get(published.models, "fraud", 9)
    with pytest.raises(LookupError, match="no version 9"):
        registry.verify(published.models, "fraud", 9)


# --- CLI ----------------------------------------------------------------------------------------


def edgelake(lake: Lake, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300", **lake.env}
    if data_dir is not None:
        env["EDGELAKE_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "edgelake", "models", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def two_models(published: Lake, tmp_path: Path) -> Lake:
    publish(published, tmp_path, "v", name="vision", metrics=VISION_METRICS)
    return published


def test_cli_show_json_prints_the_manifest_with_metrics_and_stage(two_models: Lake) -> None:
    result = edgelake(two_models, "show", "vision", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown["metrics"]) == {"accuracy", "int8_accuracy", "size_ratio", "int8_agreement"}
    manifest = json.loads((version_dir(two_models, 1, "vision") / MANIFEST).read_bytes())
    assert shown == {**manifest, "stage": "candidate"}
    fraud = json.loads(edgelake(two_models, "show", "fraud", "--json", "--version", "1").stdout)
    assert (fraud["version"], set(fraud["metrics"])) == (1, {"auprc", "roc_auc", "recall_at_1pct_fpr"})


def test_cli_list_promote_and_rollback(two_models: Lake) -> None:
    assert edgelake(two_models, "promote", "fraud", "1", "--to", "production").returncode == 0
    promoted = edgelake(two_models, "promote", "fraud", "2", "--to", "production")
    assert promoted.returncode == 0, promoted.stderr
    assert "fraud v1: production -> archived" in promoted.stdout and "fraud v2: canary" not in promoted.stdout
    listing = edgelake(two_models, "list").stdout
    rows = {tuple(cell.strip() for cell in line.split("│")[1:4]) for line in listing.splitlines() if "│" in line}
    assert {("fraud", "1", "archived"), ("fraud", "2", "production"), ("vision", "1", "candidate")} <= rows
    assert "auprc=0.8100" in listing and "int8_agreement=0.9800" in listing
    rolled = edgelake(two_models, "rollback", "fraud")
    assert rolled.returncode == 0 and "fraud v1: archived -> production" in rolled.stdout
    assert json.loads(edgelake(two_models, "show", "fraud", "--json").stdout)["version"] == 1

    moves = [
        tuple(cell.strip() for cell in line.split("│")[2:6]) for line in edgelake(two_models, "history", "fraud").stdout.splitlines() if "│" in line
    ]
    assert moves == [  # each move of the stage book, oldest first
        ("1", "", "candidate", ""), ("2", "", "candidate", ""), ("1", "candidate", "production", os.environ.get("USER", "")),
        ("1", "production", "archived", os.environ.get("USER", "")), ("2", "candidate", "production", os.environ.get("USER", "")),
        ("2", "production", "rolled_back", os.environ.get("USER", "")), ("1", "archived", "production", os.environ.get("USER", "")),
    ]
    unknown = edgelake(two_models, "history", "nope")
    assert unknown.returncode == 2 and "no model 'nope'" in unknown.stderr


def test_cli_verify_exits_0_when_intact_and_1_listing_problems(two_models: Lake) -> None:
    intact = edgelake(two_models, "verify", "fraud", "--all")
    assert intact.returncode == 0, intact.stderr
    assert "fraud v1: verified" in intact.stdout and "fraud v2: verified" in intact.stdout
    flip_byte(version_dir(two_models, 1) / "saved_model" / "saved_model.pb")
    assert edgelake(two_models, "verify", "fraud").returncode == 0  # the shown version is v2
    broken = edgelake(two_models, "verify", "fraud", "--all")
    assert broken.returncode == 1
    assert "fraud v1: FAILED" in broken.stdout and "saved_model/saved_model.pb: sha256 differs" in broken.stdout
    assert edgelake(two_models, "verify", "fraud", "--version", "1").returncode == 1


def test_cli_verify_uses_the_pinned_key(two_models: Lake, tmp_path: Path) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    assert edgelake(two_models, "verify", "vision", "--public-key", str(other)).returncode == 1
    elsewhere = edgelake(two_models, "verify", "vision", data_dir=tmp_path / "laptop")  # no local key there
    assert elsewhere.returncode == 0 and "proves integrity but not origin" in elsewhere.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "no model 'nope'"),
        (["verify", "fraud", "--version", "7"], "no version 7"),
        (["promote", "fraud", "1", "--to", "candidate"], "cannot promote fraud v1 from candidate to candidate"),
        (["rollback", "fraud"], "no production version"),
        (["verify", "fraud", "--all", "--version", "1"], "not both"),
    ],
)
def test_cli_errors_exit_2_with_one_line(two_models: Lake, args: list[str], message: str) -> None:
    result = edgelake(two_models, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- key rotation and revocation ----------------------------------------------------------------


def keys_dir(lake: Lake) -> Path:
    return lake.data_dir / registry.KEYS_DIR


def test_rotation_signs_new_versions_with_the_new_key_and_keeps_the_old_ones_verifying(published: Lake, tmp_path: Path) -> None:
    rotated = registry.rotate(keys_dir(published), published.lake, published.models.db, valid_days=30)
    first, second = rotated.keys
    assert rotated.sequence == 1 and first.fingerprint == fingerprint(published.key.public_key())
    new_key = registry.ensure_signing_key(keys_dir(published), published.lake)
    assert fingerprint(new_key.public_key()) == second.fingerprint == registry.current_fingerprint(keys_dir(published))
    assert stat.S_IMODE((keys_dir(published) / f"{second.fingerprint}.key").stat().st_mode) == 0o600
    third = publish(published, tmp_path, "c", signer=new_key)
    assert third.manifest.key_fingerprint == second.fingerprint
    pinned = published.key.public_key()  # the anchor a device pinned before the rotation
    assert [registry.verify(published.models, "fraud", v, pinned) for v in (1, 2, 3)] == [[], [], []]
    with pytest.raises(ValueError, match="refusing to sign with this key: key .* is valid since always until"):
        publish(published, tmp_path, "d", signer=published.key)  # the retired key signs nothing newer


def test_revocation_makes_every_version_the_key_signed_fail_verification(published: Lake, tmp_path: Path) -> None:
    old = fingerprint(published.key.public_key())
    with pytest.raises(ValueError, match="it is the last valid key"):
        registry.revoke(keys_dir(published), published.lake, published.models.db, old)
    registry.rotate(keys_dir(published), published.lake, published.models.db)
    new = registry.current_fingerprint(keys_dir(published))
    assert new is not None
    with pytest.raises(ValueError, match="it is the last valid key"):
        registry.revoke(keys_dir(published), published.lake, published.models.db, new[:12])
    revoked = registry.revoke(keys_dir(published), published.lake, published.models.db, old[:12])
    assert revoked.sequence == 2 and revoked.keys[0].revoked_at is not None
    assert registry.signed_by(published.models, old) == [("fraud", 1), ("fraud", 2)]
    problems = registry.verify(published.models, "fraud", 1)
    assert len(problems) == 1 and f"key {old[:16]} was revoked at" in problems[0]
    with pytest.raises(ValueError, match="fails verification"):
        registry.promote(published.models, "fraud", 1)
    with pytest.raises(ValueError, match="revoked already"):
        registry.revoke(keys_dir(published), published.lake, published.models.db, old)
    with pytest.raises(LookupError, match="names no key"):
        registry.revoke(keys_dir(published), published.lake, published.models.db, "00000000")


def test_a_re_signed_version_outlives_the_revocation_of_the_key_that_first_signed_it(published: Lake) -> None:
    old = fingerprint(published.key.public_key())
    registry.rotate(keys_dir(published), published.lake, published.models.db)
    signer = registry.ensure_signing_key(keys_dir(published), published.lake)
    resigned = registry.resign(published.models, "fraud", 2, signer)
    source = registry.get(published.models, "fraud", 2).manifest
    assert resigned.version == 3 and resigned.stage == "candidate"
    assert resigned.manifest.key_fingerprint == fingerprint(signer.public_key()) != old
    assert (resigned.manifest.files, resigned.manifest.metrics, resigned.manifest.lineage) == (source.files, source.metrics, source.lineage)
    assert resigned.manifest.extra["resigned_from"] == 2
    registry.revoke(keys_dir(published), published.lake, published.models.db, old)
    assert registry.verify(published.models, "fraud", 3) == [] and registry.verify(published.models, "fraud", 2) != []
    with pytest.raises(ValueError, match="refusing to re-sign fraud v2: it fails verification"):
        registry.resign(published.models, "fraud", 2, signer)


def test_a_forged_key_set_release_in_the_registry_fails_every_verification_closed(published: Lake) -> None:
    intruder = Ed25519PrivateKey.generate()
    trusted = registry.key_set(published.models)
    forged = KeySetRelease.signed(
        KeySet(sequence=1, created=trusted.created, keys=(*trusted.keys, TrustedKey.of(intruder.public_key()))), [intruder]
    )
    (published.root / registry.KEY_SETS).mkdir()
    (published.root / registry.KEY_SETS / "1.json").write_bytes(canonical_json(forged.model_dump(mode="json")))
    [problem] = registry.verify(published.models, "fraud", 1)
    assert problem.startswith("the registry's key set does not verify: key-set release 1 is not signed by a valid key of release 0")
    with pytest.raises(KeySetRefused):
        registry.rotate(keys_dir(published), published.lake, published.models.db)


def test_cli_keys_list_rotate_and_revoke(two_models: Lake) -> None:
    old = fingerprint(two_models.key.public_key())[:16]
    listing = edgelake(two_models, "keys", "list")
    assert listing.returncode == 0 and "key set release 0" in listing.stdout and "current signer" in listing.stdout
    refused = edgelake(two_models, "keys", "revoke", old)
    assert refused.returncode == 2 and "it is the last valid key" in refused.stderr
    rotated = edgelake(two_models, "keys", "rotate", "--valid-days", "30")
    assert rotated.returncode == 0 and "key set release 1: new signing key" in rotated.stdout
    resigned = edgelake(two_models, "resign", "vision", "--version", "1")
    assert resigned.returncode == 0 and "vision v2: v1 signed by key" in resigned.stdout, resigned.stderr
    revoked = edgelake(two_models, "keys", "revoke", old)
    assert revoked.returncode == 0, revoked.stderr
    assert f"key set release 2: key {old} revoked" in revoked.stdout and "3 published version(s) signed by it will be refused" in revoked.stdout
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in edgelake(two_models, "keys", "list").stdout.splitlines() if "│" in line}
    assert rows[old] == "revoked" and list(rows.values()).count("current signer") == 1
    verify = edgelake(two_models, "verify", "fraud", "--all")
    assert verify.returncode == 1 and "was revoked at" in verify.stdout
    verify = edgelake(two_models, "verify", "vision", "--all")
    assert "vision v1:" in verify.stdout and "vision v2: verified" in verify.stdout
