"""A one-file Django app the tests run behind a real sidecar, one process per unit (as each
pod runs its own app): `python django_app.py PORT`, with STICKYFARM_API_URL or
STICKYFARM_API_SOCKET in the environment, as the operator sets them."""

import json
import sys
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-secret-not-for-production",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=["stickyfarm_session.django.SessionMiddleware"],
    SESSION_ENGINE="stickyfarm_session.django.session",
    LOGGING_CONFIG=None,
)
django.setup()


def visit(request):
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse(
        {"visits": request.session["visits"], "id": request.session.session_key,
         "unit": request.headers.get("x-stickyfarm-unit")}
    )


def set_key(request):
    _ = request.session.get("visits")  # load first, then let the other request overlap
    time.sleep(float(request.GET.get("delay", "0")))
    request.session[request.GET["key"]] = request.GET["value"]
    return JsonResponse({"ok": True})


def whoami(request):
    return JsonResponse({**dict(request.session.items()), "id": request.session.session_key})


def login(request):
    request.session.cycle_key()  # what django.contrib.auth.login does
    request.session["user"] = request.GET["user"]
    return JsonResponse({"id": request.session.session_key})


def logout(request):
    request.session.flush()  # what django.contrib.auth.logout does
    return JsonResponse({"id": request.session.session_key})


def big(request):
    request.session["big"] = "x" * int(request.GET["bytes"])
    return JsonResponse({"ok": True})


def deep(request):
    v = {}
    for _ in range(int(request.GET["depth"])):
        v = {"v": v}
    request.session["deep"] = v
    return JsonResponse({"ok": True})


urlpatterns = [
    path("visit", visit), path("set", set_key), path("whoami", whoami), path("login", login),
    path("logout", logout), path("big", big), path("deep", deep),
]


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    from django.core.wsgi import get_wsgi_application

    server = make_server("127.0.0.1", int(sys.argv[1]), get_wsgi_application(),
                         server_class=Server, handler_class=QuietHandler)
    print(json.dumps({"listening": server.server_port}), flush=True)
    server.serve_forever()
