"""A client of the sidecar's session API (docs/session-api.openapi.json in the repository).

It speaks HTTP/1.1 with keep-alive (one connection per thread) over the sidecar's Unix socket
or TCP port: the addresses the operator and farmctl give the app in STICKYFARM_API_SOCKET and
STICKYFARM_API_URL.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlsplit

IfMatch = Union[int, str, None]
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SessionApiError(Exception):
    """The sidecar refused a call: `status` and its JSON error body are kept."""

    CODES = {409: "conflict", 413: "too_large", 422: "unprocessable", 503: "unavailable"}

    def __init__(self, status: int, message: str, body: Optional[Mapping[str, Any]] = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}
        self.code = self.CODES.get(status, "api_error")
        cv = self.body.get("current_version")
        self.current_version: Optional[int] = cv if isinstance(cv, int) else None


class SidecarUnreachable(Exception):
    """The sidecar could not be reached (not started, stopped, or a wrong address)."""

    def __init__(self, where: str, cause: BaseException):
        super().__init__(
            f"the Stickyfarm sidecar's session API at {where} is unreachable ({cause!r}); is the "
            "sidecar running, and does STICKYFARM_API_SOCKET or STICKYFARM_API_URL name it?"
        )
        self.where = where


@dataclass(frozen=True)
class Table:
    """One table of a session: its JSON document and version (the ETag)."""

    version: int
    value: Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def _segment(what: str, value: str) -> str:
    # Ids and table names never need escaping; anything else is a caller's bug, refused
    # before it can become another path.
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(f"invalid {what} {value!r}: expected [A-Za-z0-9_-]{{1,64}}")
    return value


def _if_match(v: IfMatch) -> dict[str, str]:
    if v is None:
        return {}
    return {"if-match": "*" if v == "*" else f'"{int(v)}"'}


class SessionApiClient:
    """The session API of one sidecar.

    `url` or `socket_path`; by default from the environment (STICKYFARM_API_SOCKET when that
    socket exists, else STICKYFARM_API_URL).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        socket_path: Optional[str] = None,
        timeout: float = 5.0,
        env: Optional[Mapping[str, str]] = None,
    ):
        env = os.environ if env is None else env
        if not url and not socket_path:
            sock = env.get("STICKYFARM_API_SOCKET")
            if sock and os.path.exists(sock):
                socket_path = sock
            else:
                url = env.get("STICKYFARM_API_URL")
        if socket_path:
            self.where = f"unix:{socket_path}"
        elif url:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"the session API URL {url!r} is not http://host:port")
            self.where = f"http://{parts.hostname}:{parts.port or 80}"
        else:
            raise ValueError(
                "no Stickyfarm session API configured: pass url or socket_path, or run the app "
                "beside the sidecar, which sets STICKYFARM_API_URL"
            )
        self._socket_path = socket_path
        self._url = urlsplit(url) if url else None
        self._timeout = timeout
        self._local = threading.local()

    # --- the API ---

    def get_session(self, sid: str) -> Optional[dict[str, Any]]:
        """The whole session `{id, generation, tables: {name: {version, doc}}}`, or None."""
        status, _, body = self._call("GET", f"/v1/sessions/{_segment('session id', sid)}")
        return None if status == 404 else self._expect(status, body, 200)

    def get_table(self, sid: str, table: str) -> Optional[Table]:
        """One table, or None when it (or the session) does not exist."""
        status, headers, body = self._call("GET", self._table(sid, table))
        if status == 404:
            return None
        value = self._expect(status, body, 200)
        return Table(version=int(headers.get("etag", "0").strip('"')), value=value)

    def put_table(self, sid: str, table: str, value: Any, if_match: IfMatch = None) -> dict[str, int]:
        """Writes a table through to PostgreSQL; `{version, generation}` once committed.

        `if_match`: the version the write is based on (0: must not exist yet), "*" for any,
        None for the version this unit cached. A stale write raises SessionApiError 409.
        """
        body = json.dumps(value, separators=(",", ":")).encode()
        headers = {"content-type": "application/json", **_if_match(if_match)}
        status, _, rbody = self._call("PUT", self._table(sid, table), body, headers)
        ack: dict[str, int] = self._expect(status, rbody, 200, 201)
        return ack

    def delete_table(self, sid: str, table: str, if_match: IfMatch = None) -> bool:
        status, _, body = self._call("DELETE", self._table(sid, table), None, _if_match(if_match))
        if status == 404:
            return False
        self._expect(status, body, 204)
        return True

    def delete_session(self, sid: str) -> bool:
        """Deletes the session on every unit (logout); False when it did not exist."""
        status, _, body = self._call("DELETE", f"/v1/sessions/{_segment('session id', sid)}")
        if status == 404:
            return False
        self._expect(status, body, 204)
        return True

    def rotate(self, sid: str) -> str:
        """Moves the session to a new id (sign-in, sign-out); returns the new id."""
        status, _, body = self._call("POST", f"/v1/sessions/{_segment('session id', sid)}/rotate")
        new_id: str = self._expect(status, body, 200)["id"]
        return new_id

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- transport ---

    def _table(self, sid: str, table: str) -> str:
        return f"/v1/sessions/{_segment('session id', sid)}/tables/{_segment('table name', table)}"

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._socket_path:
                conn = _UnixConnection(self._socket_path, self._timeout)
            else:
                assert self._url is not None
                conn = http.client.HTTPConnection(
                    self._url.hostname or "127.0.0.1", self._url.port or 80, timeout=self._timeout
                )
            self._local.conn = conn
        return conn

    def _call(
        self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict[str, str]] = None
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, path, body=body, headers=headers or {})
                r = conn.getresponse()
                data = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (OSError, http.client.HTTPException) as e:
                self.close()
                # A keep-alive connection the sidecar closed meanwhile is retried once on a
                # new one; a writes' If-Match makes a repeat harmless. Anything else is fatal.
                if attempt == 0 and reused:
                    continue
                raise SidecarUnreachable(self.where, e) from e
        raise AssertionError("unreachable")

    @staticmethod
    def _expect(status: int, body: bytes, *ok: int) -> Any:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        if status in ok:
            return parsed
        message = parsed.get("error") if isinstance(parsed, dict) else None
        raise SessionApiError(
            status,
            f"the session API refused the request ({status}): {message or 'no reason given'}",
            parsed if isinstance(parsed, dict) else None,
        )
