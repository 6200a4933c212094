"""Django sessions on Stickyfarm.

settings.py::

    SESSION_ENGINE = "stickyfarm_session.django.session"
    MIDDLEWARE = [..., "stickyfarm_session.django.SessionMiddleware", ...]  # in place of Django's

The sidecar owns the session cookie and its id; the middleware takes the id from the request
the sidecar forwards, the engine keeps the session dict in one Stickyfarm table.
"""

from .middleware import SessionMiddleware

__all__ = ["SessionMiddleware"]
