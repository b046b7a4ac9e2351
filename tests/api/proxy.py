"""Debian's nginx on loopback in front of API servers, with the proxy rules the project ships (infra/docker/nginx.conf)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from edgelake.broker import free_port
from support import REPO
from tests.conftest import server_process

NGINX_CONF = REPO / "infra" / "docker" / "nginx.conf"


def nginx_conf(listen: int, ports: list[int], workdir: Path) -> str:
    """The shipped proxy rules (infra/docker/nginx.conf) with these replicas as its upstream, run from ``workdir``."""
    server = NGINX_CONF.read_text()
    for shipped, here in [
        ("resolver 127.0.0.11 valid=10s ipv6=off;", ""),
        ("listen 8080;", f"listen 127.0.0.1:{listen};"),
        ("set $api http://api:8000;\n        proxy_pass $api;", "proxy_pass http://api;"),
    ]:
        assert shipped in server, f"{NGINX_CONF} no longer has {shipped!r}"
        server = server.replace(shipped, here)
    upstream = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=10s;" for port in ports)
    temp_paths = "\n".join(f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx-error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_paths}
    upstream api {{
{upstream}
        keepalive 32;
    }}
{server}
}}
"""


@contextmanager
def nginx(ports: list[int], workdir: Path) -> Iterator[tuple[str, Callable[[list[int]], None]]]:
    """Debian's nginx on loopback in front of ``ports``; its URL and a function that points it at other ports (a reload)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is missing: run infra/system-packages.sh (Debian package nginx)"
    listen, conf = free_port(), workdir / "nginx.conf"
    conf.write_text(nginx_conf(listen, ports, workdir))
    command = [binary, "-p", str(workdir), "-c", str(conf)]

    def repoint(new_ports: list[int]) -> None:
        conf.write_text(nginx_conf(listen, new_ports, workdir))
        subprocess.run([*command, "-t"], check=True, capture_output=True)
        subprocess.run([*command, "-s", "reload"], check=True, capture_output=True)  # graceful: old workers finish their requests

    url = f"http://127.0.0.1:{listen}"
    with server_process("nginx", command, workdir, lambda: answers_200(f"{url}/healthz")):
        yield url, repoint


def answers_200(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        return False
