"""Django's SessionMiddleware, on the sidecar's session id.

The sidecar owns the cookie: it removes any `x-stickyfarm-session` header a client sent and
passes the id it issued. This middleware takes that id, saves the session after the view like
Django's, never sets a cookie of its own, and turns the adapter's refusals into answers: a
conflicting change 409, a document too large 413 or too deep 422 (nothing saved in each case).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.utils.cache import patch_vary_headers
from django.utils.deprecation import MiddlewareMixin

from ..client import SessionApiError
from ..merge import SessionConflict

META_KEY = "HTTP_X_STICKYFARM_SESSION"


class SessionMiddleware(MiddlewareMixin):
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        super().__init__(get_response)
        self.SessionStore = import_module(settings.SESSION_ENGINE).SessionStore

    def process_request(self, request: HttpRequest) -> None:
        key = request.META.get(META_KEY)
        if not key:
            raise ImproperlyConfigured(
                "no x-stickyfarm-session header: the app must be reached through the Stickyfarm "
                "sidecar, which issues the session id"
            )
        request.session = self.SessionStore(key)

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        session = cast(Any, getattr(request, "session", None))
        if session is None:
            return response
        if session.accessed:
            patch_vary_headers(response, ("Cookie",))
        wanted = (session.modified or settings.SESSION_SAVE_EVERY_REQUEST) and not (
            session.is_empty() and session._version == 0
        )
        if wanted and response.status_code < 500:
            try:
                session.save()
            except SessionConflict as e:
                return JsonResponse({"error": str(e), "code": "conflict"}, status=409)
            except SessionApiError as e:
                if e.status in (409, 413, 422):
                    return JsonResponse({"error": str(e), "code": e.code}, status=e.status)
                raise
        return response
