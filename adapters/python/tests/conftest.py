"""Real sidecars for the tests: the `stickyfarm-sidecar` binary ($STICKYFARM_SIDECAR) on
loopback, on the PostgreSQL database $DATABASE_URL (adapters/test makes a fresh one), with the
test Django app as each unit's app."""

from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def required(name: str) -> str:
    v = os.environ.get(name)
    if not v:
        pytest.fail(f"{name} is not set: run the suite with adapters/test, which starts PostgreSQL and builds the sidecar")
    return v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sidecar:
    unit: str
    ports: dict
    socket_path: str
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['public']}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@dataclass
class Unit:
    name: str
    app: subprocess.Popen
    app_port: int
    sidecar: Sidecar
    extra: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.sidecar.url


class Farm:
    """Units of one test farm: one session-id key, as the operator keeps in a Secret."""

    def __init__(self, tmp: Path, key_file: Path):
        self.tmp = tmp
        self.key_file = key_file
        self.procs: list[subprocess.Popen] = []

    def start_sidecar(self, unit: str, app_port: int, ports=None, args=()) -> Sidecar:
        ports = ports or {"public": free_port(), "api": free_port(), "admin": free_port()}
        sock = str(self.tmp / f"{unit}.sock")
        log = self.tmp / f"{unit}.log"
        proc = subprocess.Popen(
            [required("STICKYFARM_SIDECAR"),
             "--listen", f"127.0.0.1:{ports['public']}", "--api-listen", f"127.0.0.1:{ports['api']}",
             "--api-socket", sock, "--admin-listen", f"127.0.0.1:{ports['admin']}",
             "--app-url", f"http://127.0.0.1:{app_port}", "--unit", unit, "--pod-uid", str(uuid.uuid4()),
             "--session-id-key-file", str(self.key_file), "--shutdown-grace", "2s", *args],
            env={"PATH": os.environ["PATH"], "DATABASE_URL": required("DATABASE_URL")},
            stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        sidecar = Sidecar(unit, ports, sock, proc, log)
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sidecar {unit} exited: {log.read_text()}")
            try:
                with urllib.request.urlopen(f"{sidecar.url}/_stickyfarm/health", timeout=2) as r:
                    if r.status == 200:
                        return sidecar
            except OSError:
                pass
            if time.monotonic() > deadline:
                sidecar.kill()
                pytest.fail(f"sidecar {unit} not healthy within 20 s: {log.read_text()}")
            time.sleep(0.05)

    def unit(self, name: str, api: str = "tcp", sidecar_args=()) -> Unit:
        ports = {"public": free_port(), "api": free_port(), "admin": free_port()}
        app_port = free_port()
        env = {**os.environ}
        env.pop("STICKYFARM_API_SOCKET", None)
        env.pop("STICKYFARM_API_URL", None)
        if api == "socket":
            env["STICKYFARM_API_SOCKET"] = str(self.tmp / f"{name}.sock")
        else:
            env["STICKYFARM_API_URL"] = f"http://127.0.0.1:{ports['api']}"
        app = subprocess.Popen([sys.executable, str(HERE / "django_app.py"), str(app_port)], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=(self.tmp / f"{name}-app.log").open("ab"))
        self.procs.append(app)
        line = app.stdout.readline()
        assert json.loads(line)["listening"] == app_port, line
        return Unit(name, app, app_port, self.start_sidecar(name, app_port, ports, sidecar_args))

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture(scope="session")
def session_id_key(tmp_path_factory) -> Path:
    """The farm's session-id key: one for the whole suite, since the database keeps its
    fingerprint (every unit of a farm shares it)."""
    key = tmp_path_factory.mktemp("farm") / "session-id-key"
    key.write_text(secrets.token_hex(24))
    key.chmod(0o600)
    return key


@pytest.fixture
def farm(tmp_path, session_id_key):
    f = Farm(tmp_path, session_id_key)
    yield f
    f.stop_all()


class Browser:
    """A client with a cookie jar, as a browser keeps one."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookies(self) -> dict:
        return {c.name: c.value for c in self.jar}

    def request(self, url: str, method: str = "GET", headers=None):
        req = urllib.request.Request(url, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode(errors="replace")


@pytest.fixture
def browser():
    return Browser()
