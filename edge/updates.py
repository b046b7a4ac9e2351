"""Over-the-air model updates: download aside, verify against the trusted key set, smoke-test, swap atomically, roll back.

Layout under ``<state_dir>/models/<name>/``::

    installed.json   the active version, the previous one (kept for rollback) and the refused ones, with why
    <version>/       a version that passed verification and its smoke test: manifest, signature, model, samples
    .incoming-*      a download in progress (removed on the next start)

A version directory is renamed into place only after it verified and passed its smoke test,
and ``installed.json`` is replaced atomically (fsync, rename, fsync of the directory), so a
crash at any moment leaves the device running either the old version or the new one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from edgelake.edge.client import CloudClient
from edgelake.edge.runner import EdgeFiles, EdgeModel, NotAnEdgeModel, load_model
from edgelake.device_api import AgentEvent, AgentEventKind
from edgelake.files import fsync_directory, replace_durably
from edgelake.signing import MANIFEST, Manifest, Trusted, verify_files

INSTALLED = "installed.json"

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
