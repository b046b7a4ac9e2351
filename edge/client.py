"""The device's side of the API: enrollment, heartbeats, model downloads and results."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
from pydantic import BaseModel, ValidationError

from edgelake.device_api import Assignment, Enrollment, EnrollRequest, HeartbeatRequest, KeyReleases
from edgelake.files import write_synced
from edgelake.signing import MANIFEST, SIGNATURE, KeySetRelease, Manifest

SIGNATURE_HEADER = "X-Manifest-Signature"


class CloudUnreachable(Exception):
    """The API could not be reached or answered 5xx: try again later, nothing was lost."""


class CloudRefused(Exception):
    """The API answered 4xx: retrying the same request will not help."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"{status}: {detail}")


class ResultsAck(BaseModel):
    accepted: list[str]
    duplicates: list[str]


class CloudClient:
    """One keep-alive HTTP client to the API, authenticated with the device token when given."""

    def __init__(self, api_url: str, token: str | None = None, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx2.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def enroll(self, request: EnrollRequest) -> Enrollment:
        return Enrollment.model_validate(self._json("POST", "/v1/devices/enroll", json=request.model_dump(mode="json")))

    def heartbeat(self, device_id: str, request: HeartbeatRequest) -> Assignment:
        body = request.model_dump(mode="json", exclude_none=True)
        return Assignment.model_validate(self._json("POST", f"/v1/devices/{device_id}/heartbeat", json=body))

    def send_results(self, device_id: str, events: Sequence[bytes]) -> ResultsAck:
        """Post EdgeInference events already in their JSON wire form."""
        body = b'{"events":[' + b",".join(events) + b"]}"
        headers = {"Content-Type": "application/json"}
        return ResultsAck.model_validate(self._json("POST", f"/v1/devices/{device_id}/results", content=body, headers=headers))

    def fetch_key_releases(self, after: int) -> list[KeySetRelease]:
        """The registry's key-set releases numbered above ``after``, oldest first, not yet verified."""
        return KeyReleases.model_validate(self._json("GET", "/v1/registry/keys", params={"after": after})).releases

    def fetch_manifest(self, name: str, version: int, into: Path) -> Manifest:
        """Write a version's manifest and its signature into ``into``, synced; the manifest as parsed, not yet verified."""
        response = self._request("GET", f"/v1/models/{name}/{version}/manifest")
        try:
            manifest = Manifest.model_validate_json(response.content)
        except ValidationError as error:
            raise CloudRefused(response.status_code, f"the manifest of {name} v{version} does not parse: {error.errors()[0]['msg']}") from None
        write_synced(into / MANIFEST, response.content)
        write_synced(into / SIGNATURE, response.headers.get(SIGNATURE_HEADER, "").encode())
        return manifest

    def fetch_artifacts(self, name: str, version: int, files: Sequence[str], into: Path) -> None:
        """Stream the named artifacts of a version into ``into``, each synced; the caller verifies them."""
        for file in files:
            self._stream_to(f"/v1/models/{name}/{version}/artifacts/{file}", into / file)

    def _stream_to(self, path: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", path) as response:
                _raise_for(response, read=True)
                with target.open("wb") as file:
                    for chunk in response.iter_bytes():
                        file.write(chunk)
                    file.flush()
                    os.fsync(file.fileno())
        except httpx2.TransportError as error:
            raise CloudUnreachable(f"{type(error).__name__}: {error}") from None

    def _json(self, method: str, path: str, **options: Any) -> Any:
        return self._request(method, path, **options).json()

    def _request(self, method: str, path: str, **options: Any) -> httpx2.Response:
        try:
            response = self._http.request(method, path, **options)
        except httpx2.TransportError as error:
            raise CloudUnreachable(f"{type(error).__name__}: {error}") from None
        _raise_for(response)
        return response


def _raise_for(response: httpx2.Response, read: bool = False) -> None:
    if response.status_code < 400:
        return
    if read:
        response.read()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code >= 500 or response.status_code == 429:  # overloaded or rate limited: later
        raise CloudUnreachable(f"{response.status_code}: {detail}")
    raise CloudRefused(response.status_code, str(detail))

