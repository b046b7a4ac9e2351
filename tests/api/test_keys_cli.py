"""``edgelake keys``: create prints the key once, list shows it without the secret, revoke locks it out of a running server within the key cache time."""

from __future__ import annotations

import getpass
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
from typer.testing import CliRunner

from edgelake.api.app import create_app
from edgelake.api.audit import AuditLog
from edgelake.control_db import ControlDb
from edgelake.cli import app
from edgelake.settings import Settings

if TYPE_CHECKING:
    from tests.api.conftest import Serve


def test_keys_create_list_and_revoke(tmp_path: Path, serve: Serve) -> None:
    runner = CliRunner()
    env = {"EDGELAKE_DATA_DIR": str(tmp_path), "EDGELAKE_LAKE_ROOT": str(tmp_path / "lake")}
    created = runner.invoke(app, ["keys", "create", "--name", "dashboard", "--role", "analyst"], env=env)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("elk_") and len(token) > 40
    (tmp_path / "lake").mkdir()
    with serve(create_app(Settings(data_dir=tmp_path, lake_root=str(tmp_path / "lake")))) as url:
        with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            assert client.get("/v1/models").status_code == 200
            listed = runner.invoke(app, ["keys", "list"], env=env)
            assert listed.exit_code == 0 and "dashboard" in listed.stdout and "analyst" in listed.stdout
            assert token not in listed.stdout
            key_id = next(word for word in listed.stdout.split() if word.startswith("key_"))
            revoked = runner.invoke(app, ["keys", "revoke", key_id], env=env)
            assert revoked.exit_code == 0, revoked.output
            settings = Settings()
            deadline = time.monotonic() + settings.api_key_cache_s + 1  # the server trusts what it read that long
            while (response := client.get("/v1/models")).status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert response.status_code == 401 and response.headers["content-type"] == "application/problem+json"
    assert "│ yes" in runner.invoke(app, ["keys", "list"], env=env).stdout
    *entries, refused = AuditLog(ControlDb.from_settings(Settings(data_dir=tmp_path))).events()  # the server wrote its last at shutdown
    assert [(e.action, e.target, e.outcome) for e in entries] == [("keys create", key_id, "done"), ("keys revoke", key_id, "done")]
    assert (refused.action, refused.outcome, refused.status) == ("GET /v1/models", "refused", 401)
    assert all(e.actor == f"cli:{getpass.getuser()}" and e.role == "admin" and e.client == socket.gethostname() for e in entries)


def test_keys_refuse_an_unknown_role_and_an_unknown_id(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"EDGELAKE_DATA_DIR": str(tmp_path)}
    bad_role = runner.invoke(app, ["keys", "create", "--name", "x", "--role", "root"], env=env)
    assert bad_role.exit_code == 2 and "'root' is not one of" in bad_role.stderr
    bad_id = runner.invoke(app, ["keys", "revoke", "key_nope"], env=env)
    assert bad_id.exit_code == 2 and "no API key 'key_nope'" in bad_id.stderr
    [failed] = AuditLog(ControlDb.from_settings(Settings(data_dir=tmp_path))).events()
    assert (failed.action, failed.target, failed.outcome) == ("keys revoke", "key_nope", "failed") and "no API key" in failed.detail
