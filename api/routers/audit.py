"""``/v1/audit``: the audit log, oldest first, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from edgelake.api.audit import AuditEvent, AuditLog, Outcome
from edgelake.api.auth import require
from edgelake.api.problems import PROBLEM_RESPONSES

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=PROBLEM_RESPONSES)


class AuditPage(BaseModel):
    events: list[AuditEvent]
    next_after: int = Field(description="Pass as `after` for the entries past these (the same value again when none were).")


@router.get("", summary="Admin actions and refused requests, oldest first (admin)", dependencies=[Depends(require("admin"))])
def audit_events(
    request: Request,
    after: Annotated[int, Query(ge=0, description="Only entries with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most entries answered.")] = 100,
    actor: Annotated[str | None, Query(max_length=128, description="Only this actor's entries (a key id, `cli:<user>`).")] = None,
    outcome: Annotated[Outcome | None, Query(description="Only entries with this outcome.")] = None,
) -> AuditPage:
    log: AuditLog = request.app.state.audit
    events = log.events(after=after, limit=limit, actor=actor, outcome=outcome)
    return AuditPage(events=events, next_after=events[-1].id if events and events[-1].id is not None else after)
