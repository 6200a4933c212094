"""The Django adapter's round trip, as Django's session middleware makes it on each request
that changes the session: SessionStore.load(), then save() (a write with If-Match). The peer in
the same run: the same two calls by the standard library's http.client. Prints one JSON line
per (mode, clients).

    python bench/adapters/python_bench.py API_URL PUBLIC_URL ROUND_TRIPS_PER_CLIENT CLIENTS...
"""

import http.client
import json
import sys
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import django
from django.conf import settings

API, PUB, N, COUNTS = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(c) for c in sys.argv[4:]]
settings.configure(STICKYFARM_API_URL=API, SESSION_ENGINE="stickyfarm_session.django.session", INSTALLED_APPS=[])
django.setup()
from stickyfarm_session.django.session import SessionStore  # noqa: E402

DOC = "x" * 1000


def new_session_id() -> str:
    with urllib.request.urlopen(f"{PUB}/") as r:
        for c in r.headers.get_all("set-cookie"):
            if c.startswith("sf_session="):
                return c.split(";")[0].split("=", 1)[1]
    raise RuntimeError("no sf_session cookie")


def adapter_trip(sid: str, i: int) -> None:
    s = SessionStore(sid)
    s["cart"] = DOC  # loads the session first, as a view's first access does
    s["n"] = i
    s.save()


_local = threading.local()


def raw_trip(sid: str, i: int) -> None:
    conn = getattr(_local, "conn", None)
    if conn is None:
        u = urlsplit(API)
        conn = _local.conn = http.client.HTTPConnection(u.hostname, u.port)
    path = f"/v1/sessions/{sid}/tables/raw"
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    version = r.getheader("etag") if r.status == 200 else '"0"'
    conn.request("PUT", path, body=json.dumps({"cart": DOC, "n": i}),
                 headers={"content-type": "application/json", "if-match": version})
    w = conn.getresponse()
    w.read()
    if w.status not in (200, 201):
        raise RuntimeError(f"PUT {w.status}")


def run(mode: str, clients: int) -> dict:
    trip = adapter_trip if mode == "adapter" else raw_trip
    ids = [new_session_id() for _ in range(clients)]
    for sid in ids:
        trip(sid, 0)
    lat: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 30  # bounded in time as well as in count

    def client(sid: str) -> None:
        mine = []
        for i in range(1, N + 1):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            trip(sid, i)
            mine.append((time.perf_counter() - t) * 1000)
        with lock:
            lat.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(sid,)) for sid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat.sort()
    return {"adapter": "django (python)", "mode": mode, "clients": clients, "round_trips": len(lat),
            "seconds": round(seconds, 3), "per_s": round(len(lat) / seconds),
            "p50_ms": round(lat[len(lat) // 2], 3), "p99_ms": round(lat[int(len(lat) * 0.99)], 3)}


for c in COUNTS:
    for mode in ("adapter", "raw"):
        print(json.dumps(run(mode, c)), flush=True)
