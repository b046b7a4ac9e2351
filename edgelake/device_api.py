"""The contract between edge agents and the API's ``/v1/devices`` routes: enrollment, heartbeats, assignments.

Both sides import these models, so a device and the cloud cannot drift apart. Like the
event contracts, this module needs nothing but pydantic.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from edgelake.signing import KeySetRelease, ModelName

AgentEventKind = Literal[
    "enrolled",
    "update_started",
    "update_refused",  # download, sha256 or signature failed: the version is never installed
    "smoke_test_failed",  # verified, but its outputs on the bundled samples are wrong: never activated
    "activated",
    "rolled_back",  # a new version failed at run time: the previous one serves again
    "runtime_error",
    "results_dropped",  # the store-and-forward queue was full: the oldest results were dropped, counted
    "keys_adopted",  # a newer release of the registry's key set verified and is trusted from now on
    "keys_refused",  # a key-set release did not follow the trusted set: the device keeps trusting the set it has
]
# Kinds that mean the version named in the event failed on the device; the cloud's rollout gate rolls back a canary on one.
FAILURE_KINDS: frozenset[str] = frozenset({"update_refused", "smoke_test_failed", "rolled_back", "runtime_error"})
Track = Literal["canary", "production"]
MAX_VERSION = 2**31 - 1
MAX_COUNT = 1_000_000_000  # per model and heartbeat
MAX_FREE_FORM_BYTES = 16 * 1024  # a device's hardware or health, as JSON: stored, then served back to operators


def _small(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > MAX_FREE_FORM_BYTES:
        raise ValueError(f"takes {size:,} bytes as JSON; at most {MAX_FREE_FORM_BYTES:,} are kept")
    return value


FreeForm = Annotated[dict[str, Any], AfterValidator(_small)]


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enrollment_token: str = Field(min_length=1, max_length=256)
    device_name: str = Field(min_length=1, max_length=128)
    hardware: FreeForm = Field(default_factory=dict, description="Whatever the device reports about itself: CPU, accelerator, memory.")


class Enrollment(BaseModel):
    device_id: str
    device_token: str = Field(description="The device's API key (role device, bound to device_id); shown this once.")
    registry_public_key: str | None = Field(description="PEM Ed25519 key that signs model manifests, to pin; none before the first publish.")


class ModelReport(BaseModel):
    """How one model did on a device since its previous heartbeat."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION, description="The version that made these inferences.")
    inferences: int = Field(0, ge=0, le=MAX_COUNT)
    labelled: int = Field(0, ge=0, le=MAX_COUNT, description="Inferences on inputs whose true label the device knew.")
    correct: int = Field(0, ge=0, le=MAX_COUNT, description="Labelled inferences whose prediction was the label.")
    errors: int = Field(0, ge=0, le=MAX_COUNT, description="Inferences that raised.")

    @model_validator(mode="after")
    def _subsets(self) -> ModelReport:
        if not self.correct <= self.labelled <= self.inferences:
            raise ValueError(f"expected correct <= labelled <= inferences, got {self.correct}, {self.labelled}, {self.inferences}")
        return self


class AgentEvent(BaseModel):
    """Something the agent did or refused: an update step, a rollback, dropped results."""

    kind: Annotated[str, Field(min_length=1, max_length=64)]
    time: AwareDatetime | None = None
    model: str | None = None
    version: int | None = Field(None, ge=1, le=MAX_VERSION)
    detail: str = Field("", max_length=2000)
    count: int | None = None


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[ModelName, Annotated[int, Field(ge=1)]] = Field(default_factory=dict, description="Model name -> the version the device runs.")
    reports: dict[ModelName, ModelReport] = Field(default_factory=dict, description="Model name -> how it did since the last heartbeat.")
    health: FreeForm = Field(default_factory=dict, description="Free-form health: temperatures, free disk, queue depth, memory.")
    events: list[AgentEvent] = Field(default_factory=list, max_length=100, description="Agent events since the last heartbeat.")


class AssignedVersion(BaseModel):
    version: int
    track: Track


class Assignment(BaseModel):
    """The version of each model a device should run."""

    device_id: str
    models: dict[str, AssignedVersion]
    key_set_sequence: int | None = Field(
        None, ge=1, description="The newest release of the registry's key set (GET /v1/registry/keys); none before the first rotation."
    )


class KeyReleases(BaseModel):
    """The registry's key-set releases after the one a device trusts, oldest first."""

    releases: list[KeySetRelease]
