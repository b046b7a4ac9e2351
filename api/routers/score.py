"""``POST /v1/score`` and ``POST /v1/score:batch``: fraud scores of transactions, online, with the production model.

Bodies are ``Transaction`` events, validated as strictly as the ingest path validates
them (the contract is strict, so the body's JSON is validated as JSON, not as decoded
Python values). Each card's transactions should arrive in event-time order: the card
features are computed online from the transactions scored before. Every score is also
sent to the ``fraud-scores`` topic as a ``FraudScore`` event, and so is the shadow (canary)
version's score of it where one runs (marked ``shadow``; never in the answer).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from edgelake.api.auth import require
from edgelake.api.problems import PROBLEM_RESPONSES, Problem, documented
from edgelake.api.publisher import ScoreEvents
from edgelake.api.score_outbox import ScoreEventsUnavailable
from edgelake.api.scoring import MODEL_NAME, CardStateUnavailable, Decision, ModelUnavailable, Scorer, unscorable
from edgelake.contracts import FraudScore, Transaction
from edgelake.lake.features.definitions import FeatureValues

MAX_BATCH = 1_000

router = APIRouter(
    prefix="/v1", tags=["score"], dependencies=[Depends(require("producer"))],
    responses={**PROBLEM_RESPONSES, **documented(503, "No production fraud model can be served: none, unverified, or other features.")},
)

_ONE = TypeAdapter(Transaction)
_BATCH = TypeAdapter(Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)])
_SCORE_IDS = uuid.UUID("5c0e3b8a-6f1d-4e57-9a7e-0d6e1a4e5c01")  # the namespace of score ids (any fixed UUID)


class ModelRef(BaseModel):
    name: str
    version: int


class Thresholds(BaseModel):
    review: float = Field(description="Scores from this one are sent to review.")
    decline: float = Field(description="Scores from this one are declined.")


class ScoreResult(BaseModel):
    """One transaction's fraud score and the decision it leads to."""

    score_id: str = Field(description="The event id of the FraudScore sent to the fraud-scores topic.")
    transaction_id: str
    card_id: str
    score: float = Field(ge=0, le=1, description="Calibrated fraud probability.")
    decision: Decision
    model: ModelRef
    features: FeatureValues = Field(description="The card features the model saw (lake.features names); null where undefined.")
    thresholds: Thresholds


class BatchResult(BaseModel):
    scores: list[ScoreResult] = Field(description="One per transaction, in the request's order.")


def _body(adapter: TypeAdapter[Any]) -> dict[str, Any]:
    """The OpenAPI request body of ``adapter``'s JSON, which the routes validate themselves."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": adapter.json_schema()}}}}


@router.post("/score", summary="Score one transaction", openapi_extra=_body(_ONE))
async def score_one(request: Request) -> ScoreResult:
    transaction = _validated(_ONE, await request.body())
    _refuse_unscorable([transaction], batch=False)
    return (await run_in_threadpool(_score, request, [transaction]))[0]


@router.post("/score:batch", summary=f"Score up to {MAX_BATCH:,} transactions, in order", openapi_extra=_body(_BATCH))
async def score_batch(request: Request) -> BatchResult:
    transactions = _validated_batch(await request.body())
    _refuse_unscorable(transactions, batch=True)
    return BatchResult(scores=await run_in_threadpool(_score, request, transactions))


def _validated(adapter: TypeAdapter[Any], body: bytes) -> Any:
    try:
        return adapter.validate_json(body)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()]) from None


def _validated_batch(body: bytes) -> list[Transaction]:
    """The batch, its length checked before its items are (100,000 small items took 5 s to validate, then failed the cap)."""
    try:
        items = from_json(body)
    except ValueError:
        items = None  # not JSON: validation says where
    if isinstance(items, list) and len(items) > MAX_BATCH:
        raise RequestValidationError([{"type": "too_long", "loc": ("body",), "msg": f"at most {MAX_BATCH:,} transactions a batch, not {len(items):,}"}])
    return _validated(_BATCH, body)


def _refuse_unscorable(transactions: list[Transaction], *, batch: bool) -> None:
    """A 422 naming each field that keeps a transaction from being scored (``unscorable``)."""
    now = datetime.now(UTC)
    errors = [
        {"type": "value_error", "loc": (*(("body", index) if batch else ("body",)), *field), "msg": reason}
        for index, t in enumerate(transactions)
        for field, reason in unscorable(t, now)
    ]
    if errors:
        raise RequestValidationError(errors)


def score_event_id(transaction_id: str, version: int, *, shadow: bool) -> str:
    """The fraud-scores event id of one version's score of one transaction: a retried request answers the same one (the
    card state holds the transaction once, so the score is the same too), and the lake keeps it once."""
    return "score-" + uuid.uuid5(_SCORE_IDS, f"{transaction_id}/{version}/{'shadow' if shadow else 'production'}").hex


def _score(request: Request, transactions: list[Transaction]) -> list[ScoreResult]:
    scorer: Scorer = request.app.state.scorer
    publisher: ScoreEvents = request.app.state.score_publisher
    started = time.perf_counter()
    try:
        model, scored = scorer.score(transactions)
    except ModelUnavailable as error:
        raise Problem(503, str(error), kind="model-unavailable", title="No fraud model to serve") from None
    except CardStateUnavailable as error:
        raise Problem(503, str(error), kind="card-state-unavailable", title="Online card state unavailable") from None
    latency_ms = (time.perf_counter() - started) * 1000
    now = datetime.now(UTC)
    thresholds = Thresholds(review=model.thresholds.review, decline=model.thresholds.decline)
    results, events = [], []
    for item in scored:
        t = item.transaction
        score_id = score_event_id(t.event_id, model.version, shadow=False)
        results.append(
            ScoreResult(
                score_id=score_id, transaction_id=t.event_id, card_id=t.card_id, score=item.score, decision=item.decision,
                model=ModelRef(name=MODEL_NAME, version=model.version), features=item.features, thresholds=thresholds,
            )
        )
        features = {name: float(value) for name, value in item.features.items() if value is not None}
        events.append(
            FraudScore(
                event_id=score_id, event_time=now, transaction_id=t.event_id, card_id=t.card_id, score=item.score,
                decision=item.decision, model_name=MODEL_NAME, model_version=model.version, latency_ms=latency_ms, features=features,
            )
        )
        if item.shadow is not None:
            events.append(
                FraudScore(
                    event_id=score_event_id(t.event_id, item.shadow.version, shadow=True), event_time=now, transaction_id=t.event_id, card_id=t.card_id,
                    score=item.shadow.score, decision=item.shadow.decision, model_name=MODEL_NAME, model_version=item.shadow.version,
                    latency_ms=latency_ms, features=features, shadow=True,
                )
            )
    try:
        publisher.publish(events)
    except ScoreEventsUnavailable as error:  # nothing is answered that the lake might not get; a retry scores it again
        raise Problem(503, str(error), kind="score-events-unavailable", title="Score events cannot be kept") from None
    return results
