"""The admin API's /config lifecycle routes (#17) on a real proxy with a real Lifecycle: PUT,
reload, rollback, history and status over HTTP, and who may change things (loopback, or an
admin token from admin_token_file, also from another host)."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from typing import Optional

import httpx
import pytest

from conftest import MESHCORE
from meshcore import Proxy
from meshcore.admin.guards import BODY_LIMITS, LOOPBACK_ONLY, authorize
from meshcore.lifecycle.manager import Lifecycle

OPS_TOKEN = "ops-0123456789abcdef"
CI_TOKEN = "ci-0123456789abcdef0"


def mesh(body: str, admin: str = "127.0.0.1:0") -> str:
    return (
        f'admin = "{admin}"\nadmin_token_file = "admin.tokens"\n'
        '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n'
        '[[routes]]\nlistener = "outbound"\ndirect_response = { status = 200, body = "' + body + '" }\n'
    )


def start(tmp_path, admin: str = "127.0.0.1:0"):
    (tmp_path / "admin.tokens").write_text(f"# name token\nops {OPS_TOKEN}\nci {CI_TOKEN}\n")
    path = tmp_path / "mesh.toml"
    path.write_text(mesh("one", admin))
    proxy = Proxy(path).start()
    proxy.lifecycle = Lifecycle.for_proxy(proxy, path)
    proxy.lifecycle.start()
    return proxy, path


@pytest.fixture
def admin(tmp_path):
    proxy, path = start(tmp_path)
    host, port = proxy.admin_address
    yield proxy, f"http://{host}:{port}", path
    proxy.lifecycle.close()
    proxy.stop(0.5)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def answer(proxy: Proxy) -> str:
    return httpx.get(proxy.url("outbound", "/")).text


def test_put_applies_and_history_shows_source_api_and_the_token_name(admin):
    proxy, url, _path = admin
    r = httpx.put(f"{url}/config", content=mesh("two"), headers=bearer(CI_TOKEN))
    assert (r.status_code, r.json()) == (200, {"result": "applied", "version": 2})
    assert answer(proxy) == "two"
    history = httpx.get(f"{url}/config/history").json()
    assert history["current"] == 2
    newest = history["versions"][0]
    assert (newest["version"], newest["source"], newest["who"], newest["current"]) == (2, "api", "ci", True)
    # Without a token, from this host, the caller is "loopback".
    r = httpx.put(
        f"{url}/config",
        content=json.dumps({**tomlish("three")}),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200 and answer(proxy) == "three"
    assert httpx.get(f"{url}/config/history").json()["versions"][0]["who"] == "loopback"
    stored = httpx.get(f"{url}/config/history/2").json()
    assert stored["text"] == mesh("two") and stored["format"] == "toml" and stored["source"] == "api"
    assert stored["config"]["routes"][0]["direct_response"]["body"] == "two"
    status = httpx.get(f"{url}/config/status").json()
    assert status["version"] == 3 and status["file"]["matches"] is False


def tomlish(body: str) -> dict:
    return {
        "admin": "127.0.0.1:0",
        "admin_token_file": "admin.tokens",
        "listeners": [{"name": "outbound", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "outbound", "direct_response": {"status": 200, "body": body}}],
    }


def test_yaml_is_taken_and_other_content_types_are_refused(admin):
    proxy, url, _path = admin
    yaml_text = json.dumps(tomlish("yaml"))  # JSON is YAML
    r = httpx.put(f"{url}/config", content=yaml_text, headers={"content-type": "application/yaml"})
    assert r.status_code == 200 and answer(proxy) == "yaml"
    r = httpx.put(f"{url}/config", content="x", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and "unsupported Content-Type 'application/xml'" in r.text


def test_a_refused_put_changes_nothing_and_says_why_as_check_does(admin, tmp_path):
    proxy, url, _path = admin
    bad = mesh("two").replace('listener = "outbound"', 'listener = "nowhere"')
    r = httpx.put(f"{url}/config", content=bad)
    assert r.status_code == 400 and r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.text == (
        "ConfigError: invalid config\n"
        "  PUT /config: routes[0].listener: unknown listener 'nowhere' (valid: outbound)\n"
    )
    # The same text `meshcore check` prints for that config in a file (after "meshcore: ").
    (tmp_path / "bad.toml").write_text(bad)
    done = subprocess.run([*MESHCORE, "check", str(tmp_path / "bad.toml")], capture_output=True, text=True)
    assert done.stderr == "meshcore: " + r.text.replace("PUT /config", str(tmp_path / "bad.toml"))
    assert answer(proxy) == "one"
    status = httpx.get(f"{url}/config/status").json()
    assert status["version"] == 1 and status["last_reload"]["result"] == "refused"
    assert "unknown listener 'nowhere'" in status["last_reload"]["error"]
    assert status["reloads"]["refused"] == 1
    assert len(httpx.get(f"{url}/config/history").json()["versions"]) == 1
    metrics = httpx.get(f"{url}/metrics").text
    if "config_reload_total" in metrics:  # once the lead's counter lands
        assert 'config_reload_total{result="refused"} 1' in metrics


def test_reload_rereads_the_file_and_rollback_restores_the_earlier_routing(admin):
    proxy, url, path = admin
    assert httpx.post(f"{url}/config/rollback").status_code == 409
    path.write_text(mesh("two"))
    r = httpx.post(f"{url}/config/reload", headers=bearer(OPS_TOKEN))
    assert (r.status_code, r.json()) == (200, {"result": "applied", "version": 2})
    assert answer(proxy) == "two"
    assert httpx.post(f"{url}/config/reload").json() == {"result": "unchanged", "version": 2}
    r = httpx.post(f"{url}/config/rollback", headers=bearer(OPS_TOKEN))
    assert (r.status_code, r.json()) == (200, {"result": "applied", "version": 3})
    assert answer(proxy) == "one"
    newest = httpx.get(f"{url}/config/history").json()["versions"][0]
    assert (newest["source"], newest["rollback_of"], newest["who"]) == ("rollback", 1, "ops")
    r = httpx.post(f"{url}/config/rollback", json={"version": 2})
    assert r.status_code == 200 and answer(proxy) == "two"
    assert httpx.post(f"{url}/config/rollback", json={"version": 42}).status_code == 404
    assert httpx.post(f"{url}/config/rollback", json={"version": "2"}).status_code == 400
    assert httpx.post(f"{url}/config/rollback", content=b"{nope").status_code == 400
    assert httpx.get(f"{url}/config/history/42").status_code == 404


def test_a_wrong_token_is_401_even_from_loopback(admin):
    proxy, url, _path = admin
    for headers in (bearer("ops-wrong-token-123456"), {"authorization": "Basic b3BzOng="}):
        for method, path in (("PUT", "/config"), ("POST", "/config/reload"), ("POST", "/shutdown")):
            r = httpx.request(method, f"{url}{path}", content=mesh("two"), headers=headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert answer(proxy) == "one" and proxy.running


def test_only_put_config_takes_a_large_body(admin):
    proxy, url, _path = admin
    padding = "#" * 100_000 + "\n"
    assert httpx.put(f"{url}/config", content=padding + mesh("big")).status_code == 200
    assert answer(proxy) == "big"
    limit = BODY_LIMITS[("PUT", "/config")]
    assert httpx.put(f"{url}/config", content=b"#" * (limit + 1)).status_code == 413
    assert httpx.post(f"{url}/config/rollback", content=b" " * 2000).status_code == 413


def non_loopback_address() -> Optional[str]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ipaddress.ip_address(addr).is_loopback else addr


def test_another_host_needs_a_token_and_is_known_by_its_name(tmp_path):
    addr = non_loopback_address()
    if addr is None:
        pytest.skip("this host has no address other than loopback")
    proxy, _path = start(tmp_path, admin="0.0.0.0:0")
    try:
        url = f"http://{addr}:{proxy.admin_address[1]}"
        r = httpx.put(f"{url}/config", content=mesh("two", "0.0.0.0:0"))
        assert r.status_code == 401 and "need 'Authorization: Bearer TOKEN'" in r.text
        assert httpx.post(f"{url}/shutdown").status_code == 401 and proxy.running
        assert answer(proxy) == "one"
        r = httpx.put(f"{url}/config", content=mesh("two", "0.0.0.0:0"), headers=bearer(OPS_TOKEN))
        assert r.status_code == 200 and answer(proxy) == "two"
        assert httpx.get(f"{url}/config/history").json()["versions"][0]["who"] == "ops"
        assert httpx.get(f"{url}/config/status").status_code == 200  # reads need no token
    finally:
        proxy.lifecycle.close()
        proxy.stop(0.5)


def test_the_guard_decides_by_method_address_and_token():
    tokens = [("ops", OPS_TOKEN)]
    assert authorize("GET", "192.0.2.9", None, tokens) == (None, None)
    assert authorize("POST", "127.0.0.1", None, tokens)[0] == "loopback"
    assert authorize("POST", "::ffff:127.0.0.1", None, None)[0] == "loopback"
    assert authorize("POST", "192.0.2.9", f"Bearer {OPS_TOKEN}", tokens)[0] == "ops"
    assert authorize("PUT", "192.0.2.9", f"bearer  {OPS_TOKEN} ", tokens)[0] == "ops"

    def refused(*args) -> tuple[int, str]:
        who, response = authorize(*args)
        assert who is None and response is not None
        return response.status_code, response.body.decode()

    assert refused("POST", "192.0.2.9", None, None) == (403, LOOPBACK_ONLY)
    assert refused("POST", "192.0.2.9", None, tokens)[0] == 401
    assert refused("POST", "127.0.0.1", "Bearer wrong", tokens) == (401, "invalid admin token\n")
    assert refused("POST", "127.0.0.1", f"Bearer {OPS_TOKEN}", None)[0] == 401
    assert refused("POST", "127.0.0.1", "Bearer", tokens)[0] == 401
    assert refused("POST", None, None, tokens)[0] == 401
