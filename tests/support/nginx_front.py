"""deploy/nginx.conf as a real nginx in front of wrapper replicas: the shipped file, with the test's ports."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.support.procs import ROOT, Procs, free_port, get_json, wait_until

SHIPPED = ROOT / "deploy" / "nginx.conf"
UPSTREAM_LINE = re.compile(r"^(\s*)server 127\.0\.0\.1:8001 (.*)$", re.MULTILINE)


def nginx_conf(upstream_ports: list[int], port: int) -> str:
    """The shipped config for these replicas and this listen port (its three example replicas replaced)."""
    text = SHIPPED.read_text()
    template = UPSTREAM_LINE.search(text)
    assert template is not None, "deploy/nginx.conf: no 'server 127.0.0.1:8001 ...' line to template"
    indent, options = template.group(1), template.group(2)
    text = re.sub(r"^\s*server 127\.0\.0\.1:800[23] .*\n", "", text, flags=re.MULTILINE)
    lines = "\n".join(f"{indent}server 127.0.0.1:{p} {options}" for p in upstream_ports)
    text = UPSTREAM_LINE.sub(lambda _: lines, text)
    assert "listen 127.0.0.1:8080;" in text
    return text.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};").replace(
        "worker_processes auto;", "worker_processes 1;")  # one core's worth on a shared test machine


def start_nginx(procs: Procs, upstream_ports: list[int], prefix: Path) -> str:
    """nginx (not a daemon) with its own prefix (pid, logs, temp dirs) in `prefix`; returns its base URL."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)  # nginx makes only the last level of its temp paths
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(upstream_ports, port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = procs.start("nginx", [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf),
                                 "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: get_json(url + "/health")[0] == 200, 20, f"nginx\n{proc.output()}")
    return url
