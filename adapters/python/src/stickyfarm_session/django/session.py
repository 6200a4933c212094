"""The Django session engine (`SESSION_ENGINE = "stickyfarm_session.django.session"`).

The session dict is one JSON document in the table `settings.STICKYFARM_SESSION_TABLE`
(default `django`) of the sidecar's session; values must be JSON (Django's default
serializer has the same rule). Each save names the version it was based on: a write that lost
a race is merged key by key or refused (SessionConflict), never silently dropped. Expiry is the
farm's (idle and absolute timeouts, enforced by the sidecar), not Django's cookie age.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Optional

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase

from ..client import SessionApiClient, SessionApiError
from ..merge import merge_session

_clients: dict[tuple[Optional[str], Optional[str]], SessionApiClient] = {}
_clients_lock = threading.Lock()


def client() -> SessionApiClient:
    """The process's client, from settings (STICKYFARM_API_URL / STICKYFARM_API_SOCKET) or the
    environment the operator sets."""
    url = getattr(settings, "STICKYFARM_API_URL", None)
    sock = getattr(settings, "STICKYFARM_API_SOCKET", None)
    key = (url, sock)
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            c = _clients[key] = SessionApiClient(url=url, socket_path=sock)
        return c


def table() -> str:
    return getattr(settings, "STICKYFARM_SESSION_TABLE", "django")


RETRIES = 3


class SessionStore(SessionBase):
    """A Django session whose key is the sidecar's session id."""

    def __init__(self, session_key: Optional[str] = None):
        super().__init__(session_key)
        self._version = 0
        self._base: Optional[dict[str, Any]] = None

    # Django asks whether a key may be used; every id comes from the sidecar, so any
    # well-formed one may.
    def _validate_session_key(self, key: Optional[str]) -> bool:
        return key is not None and 1 <= len(key) <= 64

    def _key(self) -> str:
        if not self.session_key:
            self.create()
        assert self.session_key is not None
        return self.session_key

    def load(self) -> dict[str, Any]:
        if not self.session_key:
            return {}
        t = client().get_table(self.session_key, table())
        if t is None or not isinstance(t.value, dict):
            self._version, self._base = (t.version if t else 0), None
            return {}
        self._version, self._base = t.version, copy.deepcopy(t.value)
        return t.value

    def exists(self, session_key: str) -> bool:
        return client().get_table(session_key, table()) is not None

    def create(self) -> None:
        # Django creates a key when it has none; Stickyfarm's keys come from the sidecar only
        # (a client can never choose one).
        raise RuntimeError(
            "no Stickyfarm session id on this request: reach the app through the sidecar and use "
            "stickyfarm_session.django.SessionMiddleware in place of Django's"
        )

    def save(self, must_create: bool = False) -> None:
        key = self._key()
        doc = dict(self.items())
        version, base, attempt = self._version, self._base, dict(doc)
        for i in range(RETRIES + 1):
            try:
                ack = client().put_table(key, table(), attempt, if_match=version)
                break
            except SessionApiError as e:
                if e.status != 409 or i == RETRIES:
                    raise
                current = client().get_table(key, table())
                now = current.value if current and isinstance(current.value, dict) else None
                attempt = merge_session(base, doc, now)
                version, base, doc = (current.version if current else 0), now, attempt
        self._version, self._base = ack["version"], copy.deepcopy(attempt)
        self._session_cache = attempt

    def delete(self, session_key: Optional[str] = None) -> None:
        key = session_key or self.session_key
        if key:
            client().delete_session(key)

    def cycle_key(self) -> None:
        """On login: the sidecar gives the session a new id (the old one dies on every unit,
        the client's cookie is reissued); the data and its version move with it."""
        data = dict(self.items())
        self._session_key = client().rotate(self._key())
        self._session_cache = data
        self.modified = True

    def flush(self) -> None:
        """On logout: Django's data is gone and the session has a new id, as Django promises."""
        self.clear()
        old = self.session_key
        if old:
            new = client().rotate(old)
            client().delete_table(new, table(), if_match="*")
            self._session_key = new
        self._version, self._base = 0, None

    @classmethod
    def clear_expired(cls) -> None:
        # The sidecar sweeps expired sessions; `manage.py clearsessions` has nothing to do.
        return None
