"""Over-the-air model updates: download aside, verify against the trusted key set, smoke-test, swap atomically, roll back.

``ModelSlot`` keeps one model's versions on the device; ``Updater`` holds the version the device runs and makes
each change to it (an update, a rollback, a new trusted key set) one at a time.

Layout under ``<state_dir>/models/<name>/``::

    installed.json   the active version, the previous one (kept for rollback) and the refused ones, with why
    <version>/       a version that passed verification and its smoke test: manifest, signature, model, samples
    .incoming-*      a download in progress (removed on the next start)

A version directory is renamed into place only after it verified and passed its smoke test,
and ``installed.json`` is replaced atomically (fsync, rename, fsync of the directory), so a
crash at any moment leaves the device running either the old version or the new one.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from edgelake.edge.client import CloudClient, CloudRefused, CloudUnreachable
from edgelake.edge.runner import EdgeFiles, EdgeModel, NotAnEdgeModel, load_model
from edgelake.device_api import AgentEvent, AgentEventKind
from edgelake.files import fsync_directory, replace_durably
from edgelake.signing import MANIFEST, Manifest, Trusted, verify_files

INSTALLED = "installed.json"
logger = logging.getLogger(__name__)

Report = Callable[[AgentEvent], None]


class Installed(BaseModel):
    """``installed.json``: what the device runs, what it can fall back to, and what it will not run again."""

    active: int | None = None
    previous: int | None = None
    refused: dict[int, str] = Field(default_factory=dict)


class UpdateFailed(Exception):
    """A version was refused or failed its smoke test; ``kind`` is the agent event that reports it."""

    def __init__(self, kind: AgentEventKind, detail: str) -> None:
        self.kind = kind
        super().__init__(detail)


class ModelSlot:
    """One model's versions on this device."""

    def __init__(self, root: Path, name: str, trusted: Trusted, report: Report) -> None:
        self.name = name
        self.directory = root / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.trusted = trusted
        self._report = report
        for stale in self.directory.glob(".incoming-*"):
            shutil.rmtree(stale, ignore_errors=True)
        path = self.directory / INSTALLED
        self.installed = Installed.model_validate_json(path.read_bytes()) if path.is_file() else Installed()

    def load_active(self) -> EdgeModel | None:
        """The active version, verified again (its files may have changed at rest); rolled back to the previous one if it fails."""
        active = self.installed.active
        if active is None:
            return None
        try:
            return self._proven(self.directory / str(active), active)
        except UpdateFailed as failure:
            self._event(failure.kind, active, f"at start: {failure}")
            return self.roll_back(f"at start: {failure}")

    def wants(self, version: int) -> bool:
        """Whether ``version`` is neither active nor refused before."""
        return version != self.installed.active and version not in self.installed.refused

    def update(self, version: int, client: CloudClient) -> EdgeModel:
        """Make ``version`` the active one: from its kept directory (the previous version) or downloaded.

        Raises UpdateFailed (and reports it) when the version is refused or fails its smoke test;
        the active version is untouched then, and this version is not tried again.
        """
        self._event("update_started", version)
        kept = self.directory / str(version)
        try:
            model = self._proven(kept, version) if kept.is_dir() else self._download(version, client)
        except UpdateFailed as failure:
            self._event(failure.kind, version, str(failure))
            self._save(self.installed.model_copy(update={"refused": {**self.installed.refused, version: str(failure)}}))
            raise
        self._activate(version)
        return model

    def roll_back(self, reason: str) -> EdgeModel | None:
        """Refuse the active version for ``reason`` and serve the previous one again (None when there is none)."""
        failing, previous = self.installed.active, self.installed.previous
        refused = {**self.installed.refused, **({failing: reason} if failing is not None else {})}
        model = None
        if previous is not None:
            try:
                model = self._proven(self.directory / str(previous), previous)
            except UpdateFailed as failure:
                refused[previous] = str(failure)
        self._save(Installed(active=None if model is None else previous, previous=None, refused=refused))
        self._event("rolled_back", failing, f"{reason}; now serving {f'v{previous}' if model else 'nothing'}")
        return model

    def _download(self, version: int, client: CloudClient) -> EdgeModel:
        incoming = Path(tempfile.mkdtemp(prefix=f".incoming-{version}-", dir=self.directory))
        try:
            manifest = client.fetch_manifest(self.name, version, incoming)
            try:
                files = EdgeFiles.of(manifest)
            except NotAnEdgeModel as error:
                raise UpdateFailed("update_refused", str(error)) from None
            client.fetch_artifacts(self.name, version, files.names(), incoming)
            model = self._proven(incoming, version)
            target = self.directory / str(version)
            shutil.rmtree(target, ignore_errors=True)
            incoming.rename(target)
            fsync_directory(self.directory)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return replace(model, directory=target)  # the same files, renamed: the interpreter stays valid

    def _proven(self, directory: Path, version: int) -> EdgeModel:
        """The version in ``directory`` once it verifies against the trusted keys and passes its smoke test."""
        try:
            manifest = Manifest.model_validate_json((directory / MANIFEST).read_bytes())
            files = EdgeFiles.of(manifest)
        except (OSError, ValidationError, NotAnEdgeModel) as error:
            raise UpdateFailed("update_refused", f"unusable manifest: {error}") from None
        problems = verify_files(directory, self.trusted, name=self.name, version=version, only=files.names())
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UpdateFailed("update_refused", problems[0] + more)
        try:
            model = load_model(directory, manifest)
            failures = model.smoke_test()
        except Exception as error:  # noqa: BLE001 - a model the runtime cannot load or run fails its smoke test
            failures = [f"{type(error).__name__}: {error}"]
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise UpdateFailed("smoke_test_failed", failures[0] + more)
        return model

    def _activate(self, version: int) -> None:
        previous = self.installed.active if self.installed.active != version else self.installed.previous
        self._save(Installed(active=version, previous=previous, refused=self.installed.refused))
        for path in self.directory.iterdir():
            if path.is_dir() and path.name.isdigit() and int(path.name) not in (version, previous):
                shutil.rmtree(path, ignore_errors=True)
        self._event("activated", version, f"previous v{previous}" if previous else "first version")

    def _save(self, installed: Installed) -> None:
        replace_durably(self.directory / INSTALLED, installed.model_dump_json().encode())
        self.installed = installed

    def _event(self, kind: AgentEventKind, version: int | None, detail: str = "") -> None:
        self._report(AgentEvent(kind=kind, time=datetime.now(UTC), model=self.name, version=version, detail=detail))


class Updater:
    """The model the device runs, and every change to it, one at a time: an update over the air, a rollback, a new key set."""

    def __init__(self, slot: ModelSlot, report: Report) -> None:
        self.slot = slot
        self._report = report
        self._lock = threading.Lock()  # one change at a time, held through a download
        self._model = slot.load_active()

    def active(self) -> EdgeModel | None:
        """The model to run now; never waits for a change in progress."""
        return self._model

    def apply(self, version: int, client: CloudClient) -> None:
        """Run ``version`` from now on unless it is active or was refused before; when it fails, the active model stays."""
        with self._lock:
            if not self.slot.wants(version):
                return
            try:
                model = self.slot.update(version, client)
            except UpdateFailed as failure:
                logger.warning("%s v%d not installed: %s", self.slot.name, version, failure)
                return
            except (CloudUnreachable, CloudRefused) as error:
                logger.info("%s v%d not downloaded yet: %s", self.slot.name, version, error)
                return
            self._model = model
        logger.info("now running %s v%d (%s)", model.name, model.version, model.runtime)

    def failed(self, model: EdgeModel, error: Exception) -> EdgeModel | None:
        """Roll ``model`` back after it raised ``error`` at run time; the model to run instead (None: none left)."""
        detail = f"{type(error).__name__}: {error}"
        logger.error("%s v%d failed at run time: %s", model.name, model.version, detail)
        self._report(AgentEvent(kind="runtime_error", time=datetime.now(UTC), model=model.name, version=model.version, detail=detail))
        with self._lock:
            if self._model is model:
                self._model = self.slot.roll_back(f"runtime error: {detail}")
            return self._model  # the replacement, or the model another change put in place meanwhile

    def trust(self, keys: Trusted) -> None:
        """Verify against ``keys`` from now on; the active model is checked again (one signed by a key revoked now is rolled back)."""
        with self._lock:
            self.slot.trusted = keys
            if self.slot.installed.active is not None:
                self._model = self.slot.load_active()
