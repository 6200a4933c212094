"""The Django session engine against real sidecars on a real PostgreSQL (adapters/test)."""

import threading
import time

from stickyfarm_session import SessionApiClient


def test_a_session_is_created_read_updated_and_flushed(farm, browser):
    a = farm.unit("crud-a")
    status, first = browser.request(f"{a.url}/visit")
    assert status == 200 and first["visits"] == 1 and first["unit"] == "crud-a"
    _, second = browser.request(f"{a.url}/visit")
    assert second["visits"] == 2 and second["id"] == first["id"], "the sidecar's id is the session key"
    api = SessionApiClient(url=a.sidecar.api_url)
    t = api.get_table(first["id"], "django")
    assert t.version == 2 and t.value == {"visits": 2}
    status, out = browser.request(f"{a.url}/logout", "POST")
    assert status == 200 and out["id"] != first["id"]
    assert api.get_session(first["id"]) is None, "the old id is dead"
    _, again = browser.request(f"{a.url}/visit")
    assert again["visits"] == 1, "logout left nothing of Django's data"


def test_concurrent_writers_merge_different_keys_and_refuse_the_same_key(farm, browser):
    a = farm.unit("race-a")
    browser.request(f"{a.url}/visit")

    def both(k1, v1, k2, v2):
        out = {}
        def go(k, v):
            out[(k, v)] = browser.request(f"{a.url}/set?key={k}&value={v}&delay=0.3", "POST")
        ts = [threading.Thread(target=go, args=kv) for kv in ((k1, v1), (k2, v2))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out

    out = both("colour", "red", "size", "L")
    assert sorted(s for s, _ in out.values()) == [200, 200]
    _, me = browser.request(f"{a.url}/whoami")
    assert me["colour"] == "red" and me["size"] == "L", "neither write lost the other"

    out = both("colour", "green", "colour", "blue")
    assert sorted(s for s, _ in out.values()) == [200, 409], out
    (lost_body,) = [b for s, b in out.values() if s == 409]
    assert lost_body["code"] == "conflict" and "changed by another request" in lost_body["error"]
    (winner,) = [v for (_, v), (s, _) in out.items() if s == 200]
    _, me = browser.request(f"{a.url}/whoami")
    assert me["colour"] == winner


def test_cycle_key_rotates_the_id_keeps_the_data_and_reissues_the_cookie(farm, browser):
    a = farm.unit("rotate-a")
    _, first = browser.request(f"{a.url}/visit")
    before = browser.cookies()
    status, login = browser.request(f"{a.url}/login?user=ada", "POST")
    assert status == 200 and login["id"] != first["id"]
    assert browser.cookies() != before, "the cookie was reissued"
    assert SessionApiClient(url=a.sidecar.api_url).get_session(first["id"]) is None
    _, me = browser.request(f"{a.url}/whoami")
    assert me["id"] == login["id"] and me["user"] == "ada" and me["visits"] == 1


def test_a_session_idle_longer_than_the_farm_allows_is_gone(farm, browser):
    a = farm.unit("expiry-a", sidecar_args=["--idle-timeout", "2s"])
    _, first = browser.request(f"{a.url}/visit")
    assert browser.request(f"{a.url}/visit")[1]["visits"] == 2
    time.sleep(3.5)
    _, later = browser.request(f"{a.url}/visit")
    assert later["visits"] == 1
    assert SessionApiClient(url=a.sidecar.api_url).get_session(first["id"]) is None


def test_the_state_survives_a_sidecar_restart_and_another_unit_serves_it(farm, browser):
    a = farm.unit("restart-a")
    _, first = browser.request(f"{a.url}/visit")
    browser.request(f"{a.url}/visit")
    a.sidecar.stop()
    a.sidecar = farm.start_sidecar("restart-a", a.app_port, a.sidecar.ports)
    _, r = browser.request(f"{a.url}/visit")
    assert r["visits"] == 3 and r["id"] == first["id"]
    b = farm.unit("restart-b")
    a.sidecar.stop()
    _, on_b = browser.request(f"{b.url}/visit")
    assert on_b["unit"] == "restart-b" and on_b["id"] == first["id"]
    assert on_b["visits"] == 4, "loaded from PostgreSQL on the other unit"


def test_the_engine_talks_to_the_sidecar_over_its_unix_socket(farm, browser):
    a = farm.unit("socket-a", api="socket")
    browser.request(f"{a.url}/visit")
    _, r = browser.request(f"{a.url}/visit")
    assert r["visits"] == 2
    assert SessionApiClient(socket_path=a.sidecar.socket_path).get_table(r["id"], "django").value == {"visits": 2}


def test_too_large_or_too_deep_is_refused_with_the_sidecars_error_and_nothing_saved(farm, browser):
    a = farm.unit("limits-a", sidecar_args=["--max-table-size", "64KiB", "--max-json-depth", "16"])
    _, first = browser.request(f"{a.url}/visit")
    status, big = browser.request(f"{a.url}/big?bytes=100000", "POST")
    assert status == 413 and big["code"] == "too_large" and "max-table-size" in big["error"]
    status, deep = browser.request(f"{a.url}/deep?depth=40", "POST")
    assert status == 422 and deep["code"] == "unprocessable", deep
    assert "max-json-depth" in deep["error"], deep
    t = SessionApiClient(url=a.sidecar.api_url).get_table(first["id"], "django")
    assert t.version == 1 and "big" not in t.value


def test_an_unreachable_sidecar_fails_the_request_and_never_yields_an_empty_session(farm, browser, tmp_path):
    import pytest
    from stickyfarm_session import SidecarUnreachable
    from conftest import free_port

    port = free_port()
    with pytest.raises(SidecarUnreachable, match="unreachable .*STICKYFARM_API_URL"):
        SessionApiClient(url=f"http://127.0.0.1:{port}").get_table("AAAAAAAAAAAAAAAAAAAAAA", "django")
    # Through Django: the app's API address points nowhere; the request fails with a 500.
    a = farm.unit("unreachable-a")
    a.sidecar.kill()
    a.sidecar = farm.start_sidecar("unreachable-a", a.app_port, {**a.sidecar.ports, "api": free_port()})
    status, _ = browser.request(f"{a.url}/visit")
    assert status == 500
    log = (tmp_path / "unreachable-a-app.log").read_text()
    # Reached without the sidecar: refused (500), never a fresh session.
    status, _ = browser.request(f"http://127.0.0.1:{a.app_port}/visit")
    assert status == 500
    log = (tmp_path / "unreachable-a-app.log").read_text()
    assert "through the Stickyfarm sidecar" in log or "x-stickyfarm-session" in log
