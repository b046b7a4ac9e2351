"""``edgelake models``: the signed model registry and its rollout stages."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgelake.cli.audit import admin_command
from edgelake.console import console, err_console, metric_text, reported_errors
from edgelake.errors import UserError
from edgelake.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edgelake.signing import TrustedKey
    from edgelake.training.registry import Registry, Transition

app = typer.Typer(help="The signed model registry: versions, stages, promotion, rollback, verification.", no_args_is_help=True)
keys_app = typer.Typer(
    help="The registry's signing keys: list them, rotate to a new one (devices follow without re-enrollment), revoke one.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

PUBLIC_KEY_OPTION = typer.Option(
    None, "--public-key", help="Trusted PEM public key; default: the local one beside the signing key in the data dir."
)


@app.command("list")
def list_models(ctx: typer.Context) -> None:
    """Every model's versions with their stage, creation time and metrics."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors():
        models = registry.Registry.from_settings(settings)
        names = registry.models(models)
        if not names:
            console.print(f"no models in {models.location}", highlight=False)
            return
        listing = Table("model", "version", "stage", "created (UTC)", "metrics")
        for name in names:
            for version, stage in registry.versions(models, name).items():
                listing.add_row(name, str(version), stage, *_summary(models, name, version))
    console.print(listing)


@app.command("show")
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = typer.Option(None, "--version", min=1, help="Version; default: production, else the newest."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and stage as one JSON object."),
) -> None:
    """A version's manifest: files with sha256, metrics, lineage, feature version, signing key."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors():
        model = registry.get(registry.Registry.from_settings(settings), name, version)
    manifest = model.manifest
    if as_json:
        print(json.dumps({**manifest.model_dump(mode="json"), "stage": model.stage}, indent=2, sort_keys=True))
        return
    created = f"{manifest.created:%Y-%m-%d %H:%M:%S} UTC"
    console.print(f"[bold]{model.name} v{model.version}[/] · {model.stage} · created {created}", highlight=False)
    console.print(f"signed by key {manifest.key_fingerprint[:16]} · features {manifest.feature_version or 'unversioned'}", highlight=False)
    console.print("lineage: " + (", ".join(f"{table}@v{v}" for table, v in sorted(manifest.lineage.items())) or "none"), highlight=False)
    metrics = Table("metric", "value")
    for metric, value in sorted(manifest.metrics.items()):
        metrics.add_row(metric, metric_text(value, metric))
    console.print(metrics)
    files = Table("file", "bytes", "sha256")
    for file, entry in sorted(manifest.files.items()):
        files.add_row(file, f"{entry.bytes:,}", entry.sha256)
    console.print(files)


@app.command("history")
def history(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = typer.Option(None, "--version", min=1, help="Only this version's moves."),
) -> None:
    """Every stage move of a model, oldest first: when, which version, from and to, by whom and why."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors():
        models = registry.Registry.from_settings(settings)
        registry.versions(models, name)  # an unknown model is an error, not an empty history
        moves = [t for t in registry.read_book(models, name).history if version is None or t.version == version]
    print_moves(moves)


def print_moves(moves: list[Transition], title: str | None = None) -> None:
    """Stage moves as a table: when, which version, from and to, by whom and why."""
    listing = Table("time (UTC)", "version", "from", "to", "by", "why", title=title)
    for move in moves:
        listing.add_row(f"{move.time:%Y-%m-%d %H:%M:%S}", str(move.version), move.from_ or "", move.to, move.actor or "", move.reason or "")
    console.print(listing)


@app.command("promote")
def promote(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: int = typer.Argument(..., min=1, help="Version to promote."),
    to: str | None = typer.Option(None, "--to", help="canary (fraud: scores in shadow; vision: part of the fleet) or production; default: the next stage."),
    reason: str | None = typer.Option(None, "--reason", help="Why, recorded in the stage history."),
    public_key: Path | None = PUBLIC_KEY_OPTION,
) -> None:
    """Move a verified version forward: candidate -> canary -> production (the one it replaces is archived)."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, f"models promote --to {to or 'next'}", f"{name} v{version}") as entry:
        entry["detail"] = reason or ""
        transitions = registry.promote(
            registry.Registry.from_settings(settings), name, version, to,
            public_key=_trusted_key(settings, public_key), actor=os.environ.get("USER"), reason=reason,
        )
    _print_transitions(name, transitions)


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    reason: str | None = typer.Option(None, "--reason", help="Why, recorded in the stage history."),
    public_key: Path | None = PUBLIC_KEY_OPTION,
) -> None:
    """Put the previous production version back into production; the current one becomes rolled_back."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "models rollback", name) as entry:
        entry["detail"] = reason or ""
        transitions = registry.rollback(
            registry.Registry.from_settings(settings), name,
            public_key=_trusted_key(settings, public_key), actor=os.environ.get("USER"), reason=reason,
        )
    _print_transitions(name, transitions)


@app.command("rollout")
def rollout(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    canary_percent: int | None = typer.Option(None, "--canary-percent", min=0, max=100, help="Share of devices on the canary."),
    canary_version: int | None = typer.Option(None, "--canary-version", min=0, help="Version the canary devices run; 0: no canary."),
    promote_after: int | None = typer.Option(None, "--promote-after", min=1, help="Healthy canary reports the gate needs."),
    max_accuracy_drop: float | None = typer.Option(
        None, "--max-accuracy-drop", min=0, max=1, help="How far below production's the canary's accuracy may be and still be promoted."
    ),
    min_labelled: int | None = typer.Option(None, "--min-labelled", min=1, help="Labelled inferences each side needs before comparing."),
    deadline_s: float | None = typer.Option(None, "--deadline-s", help="Seconds the canary has to gather that evidence before it is rolled back."),
) -> None:
    """Show a model's rollout policy, its versions' stages and how the canary fares with the gate; with options, change the
    policy in the local registry (what is not given stays) and start the canary's evidence afresh."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    options = {
        "canary_percent": canary_percent, "canary_version": canary_version, "promote_after_reports": promote_after,
        "max_accuracy_drop": max_accuracy_drop, "min_labelled": min_labelled, "deadline_s": deadline_s,
    }
    given: dict[str, int | float | None] = {field: value for field, value in options.items() if value is not None}
    if given.get("canary_version") == 0:
        given["canary_version"] = None
    with reported_errors():
        models = registry.Registry.from_settings(settings)
        policy = registry.rollout_policy(models, name)
        if given:
            rules = registry.RolloutRules.model_validate({**policy.model_dump(include=set(registry.RolloutRules.model_fields)), **given})
            with admin_command(settings, "models rollout", name) as entry:
                entry["detail"] = json.dumps(given)
                policy = registry.set_rollout(models, name, rules, actor=os.environ.get("USER"))
        stages = registry.versions(models, name)
    canary = "no canary" if policy.canary_version is None else f"canary v{policy.canary_version} on {policy.canary_percent}% of devices"
    since = "" if policy.updated is None else f" (since {policy.updated:%Y-%m-%d %H:%M:%S} UTC, by {policy.actor or 'unknown'})"
    console.print(f"[bold]{name}[/]: {canary}{since}", highlight=False)
    console.print(
        f"gate: promote after {policy.promote_after_reports} healthy reports and {policy.min_labelled:,} labelled inferences a side, "
        f"if at most {policy.max_accuracy_drop:g} below production's accuracy; roll back after {policy.deadline_s:g} s without",
        highlight=False,
    )
    console.print("stages: " + ", ".join(f"v{version} {stage}" for version, stage in stages.items()), highlight=False)
    _print_gate(settings, models, name)


def _print_gate(settings: Settings, models: Registry, name: str) -> None:
    """The canary's evidence as the local device store holds it (the API's, when it runs on this data dir)."""
    from edgelake.control_db import embedded_control_db
    from edgelake.api.devices import DeviceStore
    from edgelake.api.rollout_gate import gate_status

    embedded = embedded_control_db(settings)
    gate = None if embedded is not None and not embedded.is_file() else gate_status(DeviceStore(models.db), models, name)
    if gate is None:
        return
    for side, tally in (("canary", gate.canary), ("production", gate.production)):
        accuracy = "-" if tally.accuracy is None else f"{tally.accuracy:.3f}"
        version = "(none)" if tally.version is None else f"v{tally.version}"
        console.print(
            f"{side} {version}: {tally.healthy_reports} healthy, {tally.unhealthy_reports} unhealthy reports, "
            f"{tally.labelled:,} labelled, accuracy {accuracy}",
            highlight=False,
        )
    console.print(f"waiting for: {'; '.join(gate.missing) or 'nothing'} · {gate.deadline_s_left:.0f} s left", highlight=False)


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name: fraud (vision's canary evidence shows in `models rollout vision`)."),
    apply: bool = typer.Option(False, "--settle", help="Carry the verdict out: promote or reject the shadow version (as the API's gate does)."),
) -> None:
    """Judge the fraud canary in shadow against production on the scored transactions whose labels matured: AUPRC, ROC-AUC
    and recall at 1% FPR with paired bootstrap intervals, and the gate's verdict."""
    from edgelake.training.matured_labels import MODEL_NAME

    with reported_errors():
        if name != MODEL_NAME:
            raise UserError(f"evaluate judges the {MODEL_NAME} model's shadow on matured labels; see `edgelake models rollout {name}` for its canary")
        evaluate_shadow(ctx.obj, settle=apply)


def evaluate_shadow(settings: Settings, *, settle: bool) -> None:
    """Print the fraud shadow's matured-label evidence and the gate's verdict, and with ``settle`` carry it out; UserError
    when no fraud version is in shadow under a rollout policy."""
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry
    from edgelake.training.matured_labels import METRIC_NAMES, MODEL_NAME, matured_evidence, settle_shadow
    from edgelake.training.registry.rollout import judge

    maturity = settings.fraud_label_maturity
    lake = Lake.from_settings(settings)
    models = registry.Registry.from_settings(settings)
    policy = registry.rollout_policy(models, MODEL_NAME)
    if policy.canary_version is None:
        raise UserError(
            f"no {MODEL_NAME} version is in shadow under a rollout policy: `edgelake train fraud --promote-to canary`, "
            f"or `edgelake models rollout {MODEL_NAME} --canary-version N --max-accuracy-drop 0`"
        )
    evidence = matured_evidence(lake, policy, maturity)
    verdict = judge(policy, evidence)
    console.print(
        f"[bold]{MODEL_NAME}[/] v{policy.canary_version} in shadow for {evidence.elapsed_s / 3600:,.1f} h: {len(evidence.pairs.matured):,} "
        f"transactions scored beside production, {evidence.matured:,} with matured labels "
        f"({settings.fraud_label_maturity_days:g} days), {evidence.matured_frauds:,} frauds among them",
        highlight=False,
    )
    if 0 < evidence.matured_frauds < evidence.matured:
        canary, production, difference = evidence.estimates
        listing = Table("metric (95% interval)", f"shadow v{policy.canary_version}", "production", "shadow - production")
        for metric, title in METRIC_NAMES.items():
            listing.add_row(title, str(canary[metric]), str(production[metric]), difference[metric].signed())
        console.print(listing)
    console.print(f"verdict: {verdict.outcome}: {verdict.reason}", highlight=False)
    if settle and verdict.outcome != "wait":
        with admin_command(settings, "models evaluate --settle", f"{MODEL_NAME} v{policy.canary_version}") as entry:
            entry["detail"] = f"{verdict.outcome}: {verdict.reason}"
            transitions = settle_shadow(lake, models, maturity, actor=os.environ.get("USER"))
        _print_transitions(MODEL_NAME, transitions)


@app.command("verify")
def verify(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = typer.Option(None, "--version", min=1, help="Version; default: production, else the newest."),
    every: bool = typer.Option(False, "--all", help="Verify every version."),
    public_key: Path | None = PUBLIC_KEY_OPTION,
) -> None:
    """Check every artifact's size and sha256 and the manifest's signature; exit 1 on any problem."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors():
        if every and version is not None:
            raise UserError("give --version or --all, not both")
        models = registry.Registry.from_settings(settings)
        chosen = list(registry.versions(models, name)) if every else [version or registry.get(models, name).version]
        key = _trusted_key(settings, public_key)
        problems = {v: registry.verify(models, name, v, key) for v in chosen}
    for v, found in problems.items():
        if found:
            console.print(f"[bold red]{name} v{v}: FAILED[/]", highlight=False)
            for problem in found:
                console.print(f"  - {problem}", highlight=False)
        else:
            console.print(f"{name} v{v}: verified", highlight=False)
    if any(problems.values()):
        raise typer.Exit(1)


@app.command("resign")
def resign(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name."),
    version: int | None = typer.Option(None, "--version", min=1, help="The version to re-sign; default: the production one."),
) -> None:
    """Publish a version again, signed by the current key, as a new candidate (after a rotation, before revoking the old key)."""
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "models resign", f"{name} v{version or 'production'}") as entry:
        lake = Lake.from_settings(settings)
        models = registry.Registry.from_settings(settings)
        source = registry.get(models, name, version).version
        signer = registry.ensure_signing_key(settings.data_dir / registry.KEYS_DIR, lake)
        published = registry.resign(models, name, source, signer)
        entry["detail"] = f"v{source} published again as v{published.version}"
    console.print(
        f"{name} v{published.version}: v{source} signed by key {published.manifest.key_fingerprint[:16]}, a candidate "
        f"(promote it with `edgelake models promote {name} {published.version} --to production`)",
        highlight=False,
    )


@keys_app.command("list")
def list_keys(ctx: typer.Context) -> None:
    """Every key of the registry's key set: its status, validity, revocation and whether its private key is here."""
    from edgelake.training import registry

    settings: Settings = ctx.obj
    key_dir = settings.data_dir / registry.KEYS_DIR
    with reported_errors():
        trusted = registry.key_set(registry.Registry.from_settings(settings), registry.local_public_key(key_dir))
        held = registry.signing_keys(key_dir)
        signer = registry.current_fingerprint(key_dir)
    console.print(f"key set release {trusted.sequence}" + ("" if trusted.sequence else " (the anchor key alone, never rotated)"), highlight=False)
    listing = Table("fingerprint", "status", "valid", "revoked (UTC)", "private key here")
    now = datetime.now(UTC)
    for key in trusted.keys:
        revoked = "" if key.revoked_at is None else f"{key.revoked_at:%Y-%m-%d %H:%M:%S}"
        listing.add_row(key.fingerprint[:16], _status(key, signer, now), key.period(), revoked, "yes" if key.fingerprint in held else "no")
    console.print(listing)


@keys_app.command("rotate")
def rotate_key(
    ctx: typer.Context,
    valid_days: int | None = typer.Option(None, "--valid-days", min=1, help="Days the new key may sign; default: until rotated or revoked."),
) -> None:
    """Make a new signing key current and release a bridge key set signed by the old key and the new one."""
    from edgelake.control_db import ControlDb
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "models keys rotate", "registry signing key") as entry:
        trusted = registry.rotate(settings.data_dir / registry.KEYS_DIR, Lake.from_settings(settings), ControlDb.from_settings(settings), valid_days)
        entry["detail"] = f"key set release {trusted.sequence}: {trusted.keys[-1].fingerprint[:16]} signs from now"
    new = trusted.keys[-1]
    console.print(f"key set release {trusted.sequence}: new signing key {new.fingerprint[:16]}, valid {new.period()}", highlight=False)
    console.print(
        "the previous key stays trusted for the versions it signed and signs nothing newer; "
        "devices adopt the new set on their next heartbeat, without re-enrollment",
        highlight=False,
    )


@keys_app.command("revoke")
def revoke_key(ctx: typer.Context, key: str = typer.Argument(..., help="Fingerprint of the key, or its first 8+ hex digits.")) -> None:
    """Release a key set in which the key is revoked: devices refuse every version it signed from their next heartbeat."""
    from edgelake.lake.catalog import Lake
    from edgelake.training import registry

    settings: Settings = ctx.obj
    with reported_errors(), admin_command(settings, "models keys revoke", key):
        lake = Lake.from_settings(settings)
        models = registry.Registry.from_settings(settings)
        trusted = registry.revoke(settings.data_dir / registry.KEYS_DIR, lake, models.db, key)
        revoked = next(candidate for candidate in trusted.keys if candidate.fingerprint.startswith(key.lower()))
        orphaned = registry.signed_by(models, revoked.fingerprint)
    console.print(f"key set release {trusted.sequence}: key {revoked.fingerprint[:16]} revoked", highlight=False)
    listed = ", ".join(f"{name} v{version}" for name, version in orphaned[:10]) + (" …" if len(orphaned) > 10 else "")
    console.print(f"{len(orphaned)} published version(s) signed by it will be refused" + (f": {listed}" if orphaned else ""), highlight=False)


def _status(key: TrustedKey, signer: str | None, now: datetime) -> str:
    """What the key does now, in a word or two."""
    if key.revoked_at is not None:
        return "[red]revoked[/]"
    if key.not_before is not None and now < key.not_before:
        return "not yet valid"
    if key.not_after is not None and now > key.not_after:
        return "retired"
    return "[bold green]current signer[/]" if key.fingerprint == signer else "valid"


def _trusted_key(settings: Settings, path: Path | None) -> Ed25519PublicKey | None:
    """The key to verify against: the given file, else the local one, else None (the lake's own, with a warning)."""
    from edgelake.signing import load_public_key
    from edgelake.training.registry import KEYS_DIR, local_public_key

    if path is not None:
        try:
            return load_public_key(path.read_bytes())
        except (OSError, ValueError) as error:
            raise UserError(f"--public-key {path}: not a readable PEM public key ({error})") from None
    local = local_public_key(settings.data_dir / KEYS_DIR)
    if local is None:
        err_console.print(
            f"[yellow]warning:[/] no local public key in {settings.data_dir / KEYS_DIR}; verifying against the "
            "registry's own registry.pub, which proves integrity but not origin (pass --public-key to pin one)",
            highlight=False,
        )
    return local


def _summary(models: Registry, name: str, version: int) -> tuple[str, str]:
    """A version's creation time and metrics for the listing; a note instead when its manifest is unreadable."""
    from edgelake.training import registry

    try:
        manifest = registry.get(models, name, version).manifest
    except ValueError:
        return "", "[red]manifest unreadable: run `edgelake models verify`[/]"
    metrics = ", ".join(f"{metric}={metric_text(value, metric)}" for metric, value in sorted(manifest.metrics.items()))
    return f"{manifest.created:%Y-%m-%d %H:%M:%S}", metrics


def _print_transitions(name: str, transitions: list[Transition]) -> None:
    for transition in transitions:
        console.print(f"{name} v{transition.version}: {transition.from_} -> {transition.to}", highlight=False)
