"""``/v1/devices``: enrollment, heartbeats, model assignments and results of edge devices; ``/v1/models/{name}/rollout``.

A device enrolls once with an enrollment token an admin issued and gets an API key bound to
its device id; with it, it may speak only for itself (an admin may speak for any device).
The bodies devices send and get are the contract in :mod:`edgelake.device_api`. Each heartbeat's
model reports are kept, and the rollout gate (:mod:`edgelake.api.rollout_gate`) settles canaries on them.
Results are forwarded to Kafka at least once: an id is remembered only after the broker
acknowledged it, so a batch resent after a failure forwards only what was not yet delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from edgelake.api import rollout_gate
from edgelake.api.audit import AuditLog, gate_events
from edgelake.api.auth import require
from edgelake.api.devices import BrokerUnavailable, Device, DeviceStore, EnrollmentRefused, Heartbeat, ResultForwarder
from edgelake.api.keys import ApiKey, KeyStore
from edgelake.api.problems import PROBLEM_RESPONSES, Problem, documented
from edgelake.api.routers.models import registry_of, unknown_model_is_404
from edgelake import signing
from edgelake.contracts import EdgeInference
from edgelake.device_api import AssignedVersion, Assignment, Enrollment, EnrollRequest, HeartbeatRequest
from edgelake.settings import Settings
from edgelake.training import registry

router = APIRouter(prefix="/v1/devices", tags=["devices"], responses=PROBLEM_RESPONSES)
rollout_router = APIRouter(
    prefix="/v1/models", tags=["models"], responses={**PROBLEM_RESPONSES, **documented(404, "No such model or version.")}
)

DeviceId = Annotated[str, PathParam(pattern=r"^dev_[0-9a-f]{16}$", description="The id the device got at enrollment.")]
ModelName = Annotated[str, PathParam(pattern=signing.ModelName.__metadata__[0].pattern, description="The model's registry name.")]
RETRY_AFTER_S = 5
MAX_RESULTS = 1000


class EnrollmentTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=128, description="What the token is for, e.g. a site or a batch of devices.")
    uses: int = Field(1, ge=1, le=10_000, description="How many devices may enroll with it.")
    expires_in_s: int = Field(86_400, ge=1, le=30 * 86_400, description="Seconds until it expires.")


class IssuedEnrollmentToken(BaseModel):
    id: str
    token: str = Field(description="Shown this once; only its hash is kept.")
    name: str
    uses: int
    expires: AwareDatetime


class ResultBatch(BaseModel):
    """Results of one device; each event's ``device_id`` must be that device's."""

    model_config = ConfigDict(extra="forbid")

    events: list[EdgeInference] = Field(min_length=1, max_length=MAX_RESULTS)


# The body is validated by hand (see _result_batch), so its schema is spelled out for the OpenAPI document.
_RESULT_BATCH_SCHEMA = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {"events": {"type": "array", "minItems": 1, "maxItems": MAX_RESULTS, "items": EdgeInference.model_json_schema()}},
}


class ResultsAck(BaseModel):
    accepted: list[str] = Field(description="Ids forwarded by this request.")
    duplicates: list[str] = Field(description="Ids forwarded before (or repeated in the batch): acknowledged, not forwarded again.")


class Rollout(BaseModel):
    name: str
    production: int | None
    policy: registry.RolloutPolicy
    gate: rollout_gate.GateStatus | None = Field(description="How the canary fares with the gate; none when no canary is on.")


@router.post(
    "/enrollment-tokens", status_code=201, summary="Issue an enrollment token (admin)", dependencies=[Depends(require("admin"))]
)
def issue_enrollment_token(request: Request, body: EnrollmentTokenRequest) -> IssuedEnrollmentToken:
    record, token = _store(request).issue_token(body.name, body.uses, body.expires_in_s)
    return IssuedEnrollmentToken(id=record.id, token=token, name=record.name, uses=record.uses_left, expires=record.expires)


@router.post(
    "/enroll", status_code=201, summary="Enroll a device with an enrollment token; no API key needed",
    responses=documented(401, "The enrollment token is unknown, used up or expired."),
)
def enroll(request: Request, body: EnrollRequest) -> Enrollment:
    keys: KeyStore = request.app.state.keys
    try:
        device, token = _store(request).enroll(body.enrollment_token, body.device_name, body.hardware, keys)
    except EnrollmentRefused as error:
        raise Problem(401, str(error), kind="enrollment-refused", title="Enrollment refused") from None
    return Enrollment(device_id=device.id, device_token=token, registry_public_key=_public_key_pem(request))


@router.get("", summary="Every device with its last heartbeat", dependencies=[Depends(require("analyst"))])
def list_devices(request: Request) -> list[Device]:
    return _store(request).devices()


def _device(request: Request, device_id: DeviceId, key: ApiKey = Depends(require("device"))) -> Device:
    """The device of the path, when the caller's key is bound to it (or is an admin's)."""
    if key.role != "admin" and key.device_id != device_id:
        raise Problem(403, f"key {key.id} speaks for device {key.device_id or '(none)'}, not {device_id}", kind="forbidden")
    device = _store(request).device(device_id)
    if device is None:
        raise Problem(404, f"no device '{device_id}'", kind="unknown-device", title="Unknown device")
    return device


@router.post(
    "/{device_id}/heartbeat", summary="Report models and health; answers the versions to run",
    responses=documented(404, "No such device."), response_model_exclude_none=True,
)
def heartbeat(request: Request, body: HeartbeatRequest, device: Device = Depends(_device)) -> Assignment:
    now = datetime.now(UTC)
    _plausible(request, body, device, now)
    before = _assignment(request, device.id)
    record = Heartbeat(time=now, models=body.models, reports=body.reports, health=body.health, events=body.events)
    store = _store(request)
    store.record_heartbeat(device.id, record, {name: assigned.track for name, assigned in before.models.items()})
    settled = rollout_gate.settle_all(store, registry_of(request))
    audit: AuditLog = request.app.state.audit
    for name, transitions in settled.items():
        for event in gate_events(rollout_gate.ACTOR, name, transitions):
            audit.record(event)
    return _assignment(request, device.id) if settled else before


def _plausible(request: Request, body: HeartbeatRequest, device: Device, now: datetime) -> None:
    """A 422 for reports claiming more inferences than the device could make since its previous heartbeat (or enrollment):
    the rollout gate compares versions on them, and one device claimed 1e9 labelled inferences to sway it."""
    settings: Settings = request.app.state.settings
    previous = device.last_heartbeat.time if device.last_heartbeat is not None else device.enrolled
    allowed = int(settings.device_max_inferences_per_s * max((now - previous).total_seconds(), 1.0))
    errors = [
        {"type": "value_error", "loc": ["body", "reports", name, "inferences"],
         "msg": f"{report.inferences:,} inferences since the previous heartbeat; at most {allowed:,} are plausible"}
        for name, report in body.reports.items() if report.inferences > allowed
    ]
    if errors:
        raise RequestValidationError(errors)


@router.get(
    "/{device_id}/assignment", summary="The version of each model the device should run",
    responses=documented(404, "No such device."), response_model_exclude_none=True,
)
def assignment(request: Request, device: Device = Depends(_device)) -> Assignment:
    return _assignment(request, device.id)


async def _result_batch(request: Request) -> ResultBatch:
    """The body as a ResultBatch, validated from JSON: the contract is strict, so timestamps must be parsed from JSON text."""
    try:
        return ResultBatch.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]) from None


@router.post(
    "/{device_id}/results",
    summary="Forward a batch of EdgeInference results to Kafka, idempotently by event id",
    responses={**documented(404, "No such device."), **documented(503, "Kafka cannot be reached; send the batch again after Retry-After.")},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _RESULT_BATCH_SCHEMA}}}},
)
def results(request: Request, device: Device = Depends(_device), batch: ResultBatch = Depends(_result_batch)) -> ResultsAck:
    foreign = [(index, event) for index, event in enumerate(batch.events) if event.device_id != device.id]
    if foreign:
        errors = [
            {"type": "value_error", "loc": ["body", "events", index, "device_id"], "msg": f"names device {event.device_id}, not {device.id}"}
            for index, event in foreign
        ]
        raise RequestValidationError(errors)
    store = _store(request)
    already = store.forwarded(event.event_id for event in batch.events)
    new: dict[str, EdgeInference] = {}
    duplicates: list[str] = []
    for event in batch.events:
        if event.event_id in already or event.event_id in new:
            duplicates.append(event.event_id)
        else:
            new[event.event_id] = event
    if new:
        forwarder: ResultForwarder = request.app.state.forwarder
        try:
            forwarder.forward(list(new.values()))
        except BrokerUnavailable as error:
            raise Problem(
                503, f"the results could not be handed to Kafka ({error}); send them again", kind="broker-unavailable",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        store.mark_forwarded(device.id, new)
    return ResultsAck(accepted=list(new), duplicates=duplicates)


@rollout_router.get(
    "/{name}/rollout", summary="A model's rollout policy and how its canary fares with the gate", dependencies=[Depends(require("analyst", "device"))]
)
def get_rollout(request: Request, name: ModelName) -> Rollout:
    with unknown_model_is_404():
        return _rollout(request, name)


@rollout_router.put(
    "/{name}/rollout",
    summary="Set a model's rollout policy and its gate (admin); a new canary starts gathering evidence from now",
    responses=documented(409, "The canary version is past the canary stage: production, archived or rolled back."),
)
def put_rollout(request: Request, name: ModelName, body: registry.RolloutRules, key: ApiKey = Depends(require("admin"))) -> Rollout:
    with unknown_model_is_404():
        try:
            registry.set_rollout(registry_of(request), name, body, actor=key.id)
        except ValueError as error:
            raise Problem(409, str(error), kind="rollout-refused", title="Rollout refused") from None
        return _rollout(request, name)


def _rollout(request: Request, name: str) -> Rollout:
    models = registry_of(request)
    return Rollout(
        name=name, production=registry.current(models, name), policy=registry.rollout_policy(models, name),
        gate=rollout_gate.gate_status(_store(request), models, name),
    )


def _assignment(request: Request, device_id: str) -> Assignment:
    held = registry_of(request)
    models = {}
    for name in registry.models(held):
        assigned = registry.assigned_version(held, name, device_id)
        if assigned is not None:
            models[name] = AssignedVersion(version=assigned[0], track=assigned[1])
    return Assignment(device_id=device_id, models=models, key_set_sequence=registry.key_set_sequence(held))


def _public_key_pem(request: Request) -> str | None:
    """The app's registry's published key, else the local signer's (nothing published yet), else None."""
    try:
        return signing.public_key_pem(registry.registry_public_key(registry_of(request))).decode()
    except registry.NoPublicKey:
        path = _settings(request).data_dir / registry.KEYS_DIR / registry.PUBLIC_KEY
        return path.read_text() if path.is_file() else None


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> DeviceStore:
    return request.app.state.devices
