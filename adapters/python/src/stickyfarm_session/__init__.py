"""Stickyfarm for Python: the session API client, and a Django session backend
(`stickyfarm_session.django`)."""

from .client import SessionApiClient, SessionApiError, SidecarUnreachable, Table
from .merge import SessionConflict, merge_session

SESSION_HEADER = "x-stickyfarm-session"

__all__ = [
    "SESSION_HEADER",
    "SessionApiClient",
    "SessionApiError",
    "SessionConflict",
    "SidecarUnreachable",
    "Table",
    "merge_session",
]
