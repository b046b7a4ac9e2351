"""The rollout gate's verdicts on a fraud shadow's matured-label evidence: better beyond the interval promotes, anything
else rejects, and too little matured evidence waits. (The evidence read from a real lake through a real server is in
tests/api/test_shadow_gate.py.)"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from edgelake.training.matured_labels import MaturedEvidence, ScoredPairs, shadow_rules
from edgelake.training.registry.rollout import judge

RULES = shadow_rules(2, timedelta(days=7))


def evidence(canary_strength: float, *, n: int = 5_000, matured: int | None = None, frauds: float = 0.02, versions: tuple[int, ...] = (1,)) -> MaturedEvidence:
    rng = np.random.default_rng(0)
    is_fraud = rng.random(n) < frauds
    production = rng.normal(is_fraud * 1.0, 1.0)
    canary = production + is_fraud * canary_strength + rng.normal(0, 0.05, n)
    flags = np.arange(n) < (n if matured is None else matured)
    return MaturedEvidence(2, ScoredPairs(canary, production, frozenset(versions), is_fraud, flags, None), timedelta(days=7), elapsed_s=60)


@pytest.mark.parametrize(
    ("strength", "outcome", "said"),
    [
        (1.0, "promote", "above 0"),
        (0.0, "reject", "not above 0"),
        (-1.0, "reject", "not above 0"),
    ],
)
def test_only_a_shadow_better_beyond_the_interval_is_promoted(strength: float, outcome: str, said: str) -> None:
    verdict = judge(RULES, evidence(strength))
    assert verdict.outcome == outcome, verdict
    assert said in verdict.reason and "canary v2 AUPRC" in verdict.reason and "vs production v1" in verdict.reason, verdict
    assert "ROC-AUC" in verdict.reason and "recall at 1% FPR" in verdict.reason and "matured transactions" in verdict.reason, verdict


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"matured": 199}, "199 of 200 scored transactions with matured labels (5,000 scored in shadow; labels mature 7 days after"),
        ({"frauds": 0.0}, "the 5,000 matured transactions are all legitimate"),
        ({"versions": (1, 3)}, "production changed while the shadow ran (v1, v3)"),
    ],
)
def test_incomplete_evidence_waits_until_the_deadline_rejects(kwargs: dict[str, object], said: str) -> None:
    waiting = evidence(1.0, **kwargs)  # type: ignore[arg-type]
    verdict = judge(RULES, waiting)
    assert verdict.outcome == "wait" and said in verdict.reason, verdict
    waiting._elapsed_s = RULES.deadline_s
    assert judge(RULES, waiting).outcome == "reject"


def test_a_shadow_enters_for_three_maturity_windows_and_on_every_transaction() -> None:
    assert (RULES.canary_percent, RULES.canary_version, RULES.max_accuracy_drop, RULES.deadline_s) == (100, 2, 0.0, 21 * 86_400)
    assert shadow_rules(2, timedelta(0)).deadline_s == 3600
