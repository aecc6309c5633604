"""Lifecycle (#17) in-process, on a real proxy: every change validated, applied, recorded and
counted; a refused one changes nothing; rollback restores the earlier routing."""

from __future__ import annotations

import httpx
import pytest

from conftest import wait_until
from meshcore import Proxy
from meshcore.lifecycle.history import History
from meshcore.lifecycle.manager import Lifecycle, state_dir_of


def mesh(body: str, extra: str = "") -> str:
    return (
        extra + '[[listeners]]\nname = "outbound"\nbind = "127.0.0.1:0"\n\n'
        '[[routes]]\nlistener = "outbound"\ndirect_response = { status = 200, body = "' + body + '" }\n'
    )


@pytest.fixture
def running(tmp_path):
    path = tmp_path / "mesh.toml"
    path.write_text(mesh("one"))
    proxy = Proxy(path).start()
    lifecycle = Lifecycle.for_proxy(proxy, path)
    lifecycle.start()
    yield proxy, lifecycle, path
    lifecycle.close()
    proxy.stop(0.5)


def answer(proxy: Proxy) -> str:
    return httpx.get(proxy.url("outbound", "/")).text


def test_the_state_dir_is_beside_the_config_by_default(running, tmp_path):
    proxy, lifecycle, path = running
    assert state_dir_of(proxy.config) == tmp_path / "mesh.state"
    assert (tmp_path / "mesh.state" / "configs" / "1.toml").read_text() == mesh("one")
    assert lifecycle.status()["file"]["matches"] is True


def test_reload_applies_records_and_an_unchanged_file_is_no_new_version(running):
    proxy, lifecycle, path = running
    path.write_text(mesh("two"))
    outcome = lifecycle.reload(source="file", who="ops")
    assert (outcome.applied, outcome.version, outcome.result) == (True, 2, "applied")
    assert answer(proxy) == "two"
    path.write_text("# same config, other text\n" + mesh("two"))
    assert lifecycle.reload(source="file", who="ops").result == "unchanged"
    history = lifecycle.history()
    assert [(v["version"], v["source"], v["who"], v["current"]) for v in history] == [
        (2, "file", "ops", True),
        (1, "start", "start", False),
    ]
    assert lifecycle.status()["reloads"] == {"applied": 1, "refused": 0, "unchanged": 1}


def test_a_refused_config_changes_nothing_and_status_says_why(running):
    proxy, lifecycle, path = running
    path.write_text(mesh("two").replace('listener = "outbound"', 'listener = "nowhere"'))
    outcome = lifecycle.reload(source="signal", who="signal")
    assert outcome.result == "refused" and outcome.version == 1
    assert outcome.error.startswith("ConfigError: invalid config\n")
    assert f"{path}: routes[0].listener: unknown listener 'nowhere'" in outcome.error
    assert answer(proxy) == "one"
    status = lifecycle.status()
    assert status["version"] == 1 and status["last_reload"]["error"] == outcome.error
    assert status["file"]["matches"] is False and "routes[0].listener" in status["file"]["error"]
    assert len(lifecycle.history()) == 1


def test_a_put_body_is_applied_from_history_only(running):
    proxy, lifecycle, path = running
    outcome = lifecycle.reload(source="api", who="ops", text='{"workers": 0}', fmt="json")
    assert outcome.result == "refused" and "PUT /config: workers: " in outcome.error
    assert lifecycle.reload(source="api", who="ops", text=mesh("put"), fmt="toml").applied
    assert answer(proxy) == "put" and path.read_text() == mesh("one")
    assert lifecycle.status()["file"]["matches"] is False


def test_rollback_restores_the_earlier_routing_as_a_new_version(running):
    proxy, lifecycle, path = running
    path.write_text(mesh("two"))
    lifecycle.reload(source="file", who="ops")
    outcome = lifecycle.rollback(None, who="ops")
    assert (outcome.applied, outcome.version) == (True, 3)
    assert answer(proxy) == "one"
    newest = lifecycle.history()[0]
    assert (newest["source"], newest["rollback_of"], newest["who"]) == ("rollback", 1, "ops")
    assert lifecycle.rollback(2, who="ops").applied and answer(proxy) == "two"
    assert lifecycle.rollback(99, who="ops").result == "nothing"


def test_nothing_to_roll_back_to(running):
    _proxy, lifecycle, _path = running
    outcome = lifecycle.rollback(None, who="ops")
    assert (outcome.applied, outcome.result) == (False, "nothing")


def test_history_survives_a_restart_and_a_new_start_config_is_a_new_version(running):
    proxy, lifecycle, path = running
    path.write_text(mesh("two"))
    lifecycle.reload(source="file", who="ops")
    lifecycle.close()
    proxy.stop(0.5)
    again = Proxy(path).start()
    try:
        restarted = Lifecycle.for_proxy(again, path)
        restarted.start()  # same config as the newest version: no new one
        assert [v["version"] for v in restarted.history()] == [2, 1]
        restarted.close()
        path.write_text(mesh("three"))
        again.reload(path)
        third = Lifecycle(again, path, History(state_dir_of(again.config)))
        third.start()
        assert [(v["version"], v["source"]) for v in third.history()][:1] == [(3, "start")]
        third.close()
    finally:
        again.stop(0.5)


def test_a_version_has_its_text_and_validated_config(running):
    _proxy, lifecycle, _path = running
    v = lifecycle.version(1)
    assert v["text"] == mesh("one") and v["format"] == "toml"
    assert v["config"]["routes"][0]["direct_response"]["body"] == "one"
    assert lifecycle.version(7) is None


class JudgesEveryReloadBad:
    """Stands in for lifecycle/verify.py's Verifier (another branch): its verdict comes at once."""

    made: list[JudgesEveryReloadBad] = []

    def __init__(self, route_stats, policy, on_bad) -> None:
        self.route_stats, self.policy, self.on_bad = route_stats, policy, on_bad
        self.begun: list[int] = []
        self.cancelled = 0
        JudgesEveryReloadBad.made.append(self)

    def start(self) -> None:
        self.route_stats()

    def begin(self, version: int) -> None:
        self.begun.append(version)
        self.on_bad(version, "verify-success-rate", "success rate 50% < 99%")

    def cancel(self) -> None:
        self.cancelled += 1

    def status(self):
        return {"version": self.begun[-1] if self.begun else None}

    def stop(self) -> None:
        pass


def test_a_version_that_fails_verification_is_marked_bad_and_rolled_back(tmp_path):
    policy = 'reload = { verify = "30s" }\n'
    path = tmp_path / "mesh.toml"
    path.write_text(mesh("one", policy))
    proxy = Proxy(path).start()
    proxy.route_stats = lambda: {"buckets_ms": [1], "routes": {}}  # the lead's, until it lands
    lifecycle = Lifecycle(proxy, path, History(tmp_path / "state"), JudgesEveryReloadBad)
    try:
        lifecycle.start()
        path.write_text(mesh("two", policy))
        assert lifecycle.reload(source="file", who="ops").version == 2
        verifier = JudgesEveryReloadBad.made[-1]
        assert verifier.begun == [2] and verifier.policy.verify == "30s"
        # The rollback runs on a thread of its own.
        wait_until(lambda: lifecycle.status()["version"] == 3, what="the automatic rollback")
        assert answer(proxy) == "one"
        history = lifecycle.history()
        assert (history[0]["source"], history[0]["who"], history[0]["rollback_of"]) == (
            "rollback",
            "verify",
            1,
        )
        assert history[1]["version"] == 2 and history[1]["bad"] == "verify-success-rate"
        assert verifier.cancelled == 1  # the rollback itself is not judged
        # The bad version is skipped by a later plain rollback: there is none left to go to.
        assert lifecycle.rollback(None, who="ops").result == "nothing"
    finally:
        lifecycle.close()
        proxy.stop(0.5)
