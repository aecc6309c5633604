"""Inbound authorization: defaults, rules by identity (with wildcards), network, path and method;
protected paths; audit."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from mesh_helpers import addr, identity_files, inbound_config, issue, make_ca, outbound_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    ca = make_ca(tmp / "ca")
    names = {
        "web": "ns/default/sa/web",
        "api": "ns/default/sa/api",
        "alice": "ns/ops/sa/alice",
        "bob": "ns/dev/sa/bob",
    }
    return ca, {k: identity_files(ca, *issue(ca, v, tmp / k)) for k, v in names.items()}


@pytest.fixture
def callers(pki, backend, proxy):
    """Builds an inbound proxy with `policy` and one outbound proxy per caller identity."""
    _, ids = pki

    def make(policy, tls="mesh", who=("web", "alice", "bob"), routes=None):
        config = inbound_config(ids["api"], backend("app").addr, tls=tls, policy=policy)
        if routes is not None:
            config["routes"] = routes
        inbound = proxy(config)
        outs = {w: proxy(outbound_config(ids[w], addr(inbound, "inbound"))) for w in who}
        return inbound, outs

    return make


def status(p, path="/") -> int:
    return httpx.get(p.url("outbound", path)).status_code


def authz(inbound, kind: str) -> dict[str, float]:
    pattern = rf'^inbound_http_authz_{kind}_total{{listener="inbound",rule="([^"]+)"}} (\S+)$'
    return {rule: float(v) for rule, v in re.findall(pattern, inbound.metrics(), re.M)}


def test_default_deny_with_identity_rules_and_wildcards(callers):
    inbound, outs = callers(
        {
            "default": "deny",
            "rules": [
                {"name": "ops", "listener": "inbound", "identities": ["spiffe://mesh.local/ns/ops/sa/*"]},
                {
                    "name": "web",
                    "listener": "inbound",
                    "identities": ["spiffe://mesh.local/ns/default/sa/web"],
                },
            ],
        }
    )
    assert status(outs["alice"]) == 200
    assert status(outs["web"]) == 200
    r = httpx.get(outs["bob"].url("outbound"))
    assert r.status_code == 403
    assert r.headers["meshcore-error"] == "unauthorized"
    assert authz(inbound, "allow") == {"ops": 1, "web": 1}
    assert authz(inbound, "deny") == {"default:deny": 1}


IDS = {
    "web": "spiffe://mesh.local/ns/default/sa/web",
    "alice": "spiffe://mesh.local/ns/ops/sa/alice",
    "bob": "spiffe://mesh.local/ns/dev/sa/bob",
}


def explained(
    policy: dict, who: str, method: str, path: str, routes: list | None = None, headers: dict | None = None
) -> dict:
    """What `meshcore policy explain` says of the request (the same Rust evaluator)."""
    from meshcore import _core
    from meshcore.config import load

    cfg = load(
        {
            "listeners": [{"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"}],
            "routes": routes or [],
            "services": [{"name": "app", "endpoints": [{"addr": "127.0.0.1:1"}]}],
            "policy": policy,
        }
    ).to_core()
    return json.loads(
        _core.explain_policy(
            json.dumps(cfg["policy"]),
            "inbound",
            "127.0.0.1",
            IDS[who],
            path,
            method,
            routes_json=json.dumps(cfg["routes"]),
            headers=list((headers or {}).items()),
        )
    )


def check_cases(policy: dict, outs: dict, cases: list[tuple], routes: list | None = None) -> None:
    """Each (caller, method, path, status[, headers]) live through the mesh, and explained alike."""
    for who, method, path, expected, *rest in cases:
        headers = rest[0] if rest else {}
        got = httpx.request(method, outs[who].url("outbound", path), headers=headers).status_code
        assert got == expected, (who, method, path, headers)
        decision = explained(policy, who, method, path, routes, headers)["decision"]
        assert decision == ("deny" if expected == 403 else "allow"), (who, method, path, decision)


def test_a_rule_for_a_path_protects_it_whatever_the_default(callers):
    """The issue's case: under `all-authenticated`, a rule naming /admin for ops keeps every other
    authenticated caller out of /admin, and leaves the rest of the service to the default."""
    policy = {
        "default": "all-authenticated",
        "rules": [
            {
                "name": "ops-admin",
                "listener": "inbound",
                "path_prefix": "/admin",
                "identities": ["spiffe://mesh.local/ns/ops/sa/*"],
            },
        ],
    }
    inbound, outs = callers(policy)
    refused = httpx.get(outs["web"].url("outbound", "/admin/x"))
    assert refused.status_code == 403
    assert refused.headers["meshcore-error"] == "unauthorized"
    check_cases(
        policy,
        outs,
        [
            ("bob", "GET", "/admin", 403),
            ("alice", "GET", "/admin/x", 200),
            # Whole segments: /administrator is not under /admin, so the default lets bob in.
            ("bob", "GET", "/administrator", 200),
            ("web", "GET", "/other", 200),
        ],
    )
    assert authz(inbound, "deny") == {"protected:/admin": 2}
    assert authz(inbound, "allow") == {"ops-admin": 1, "default:all-authenticated": 2}


def test_the_longest_protecting_prefix_decides_and_methods_narrow_a_rule(callers):
    policy = {
        "default": "all-unauthenticated",
        "rules": [
            {
                "listener": "inbound",
                "path_prefix": "/admin",
                "identities": ["spiffe://mesh.local/ns/ops/sa/*"],
            },
            {
                "listener": "inbound",
                "path_prefix": "/admin/reports",
                "methods": ["get"],
                "identities": ["spiffe://mesh.local/ns/default/sa/web"],
            },
        ],
    }
    _, outs = callers(policy)
    check_cases(
        policy,
        outs,
        [
            ("web", "GET", "/admin/reports/1", 200),
            ("web", "POST", "/admin/reports/1", 403),
            ("web", "HEAD", "/admin/reports/1", 403),
            # The deeper prefix narrows /admin: ops may not read the reports.
            ("alice", "GET", "/admin/reports/1", 403),
            ("alice", "GET", "/admin/users", 200),
            ("web", "GET", "/admin/users", 403),
            ("bob", "GET", "/shop", 200),
        ],
    )


def test_audit_records_but_never_opens_a_protected_path(callers, capfd):
    inbound, outs = callers(
        {
            "default": "audit",
            "rules": [{"listener": "inbound", "path_prefix": "/admin", "identities": ["spiffe://x/none"]}],
        },
        who=("web",),
    )
    assert status(outs["web"], "/admin") == 403
    assert status(outs["web"], "/") == 200
    assert authz(inbound, "deny") == {"protected:/admin": 1}
    assert authz(inbound, "allow") == {"default:audit": 1}


def test_a_rule_method_that_is_not_a_token_is_refused():
    from meshcore import ConfigError
    from meshcore.config import load

    cfg = {
        "listeners": [{"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"}],
        "policy": {"rules": [{"listener": "inbound", "methods": ["GET", "GE T"]}]},
    }
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].methods: .*'GE T' is not a request method"):
        load(cfg)


def test_path_rules_with_deny_default(callers):
    _, outs = callers(
        {
            "default": "deny",
            "rules": [
                {
                    "listener": "inbound",
                    "path_prefix": "/admin",
                    "identities": ["spiffe://mesh.local/ns/ops/sa/*"],
                },
                {"listener": "inbound", "path_prefix": "/public"},
            ],
        }
    )
    assert status(outs["alice"], "/admin/users") == 200
    assert status(outs["bob"], "/admin/users") == 403
    assert status(outs["bob"], "/public/page") == 200
    assert status(outs["bob"], "/publicity") == 403
    assert status(outs["alice"], "/other") == 403


def test_network_rules(callers):
    _, outs = callers(
        {
            "default": "deny",
            "rules": [
                {"name": "elsewhere", "listener": "inbound", "networks": ["10.0.0.0/8"]},
                {
                    "name": "loopback-web",
                    "listener": "inbound",
                    "networks": ["127.0.0.0/8"],
                    "identities": ["spiffe://mesh.local/ns/default/sa/web"],
                },
            ],
        },
        who=("web", "bob"),
    )
    assert status(outs["web"]) == 200
    assert status(outs["bob"]) == 403


def test_all_authenticated_refuses_plaintext_on_permissive(callers, proxy):
    inbound, outs = callers({"default": "all-authenticated"}, tls="permissive", who=("web",))
    assert status(outs["web"]) == 200
    r = httpx.get(f"http://{addr(inbound, 'inbound')}/")
    assert r.status_code == 403


def test_all_unauthenticated_allows_plaintext(callers):
    inbound, _ = callers({"default": "all-unauthenticated"}, tls="permissive", who=())
    assert httpx.get(f"http://{addr(inbound, 'inbound')}/").status_code == 200


def test_audit_allows_but_counts(callers, capfd):
    inbound, outs = callers(
        {
            "default": "audit",
            "rules": [
                {
                    "name": "web",
                    "listener": "inbound",
                    "identities": ["spiffe://mesh.local/ns/default/sa/web"],
                }
            ],
        },
        who=("web", "bob"),
    )
    assert status(outs["web"]) == 200
    assert status(outs["bob"]) == 200  # would be denied, but audit only records it
    assert authz(inbound, "allow") == {"web": 1, "default:audit": 1}
    assert authz(inbound, "deny") == {}
    assert "audit: GET / from" in capfd.readouterr().err


def test_a_rule_path_without_a_leading_slash_is_refused_as_it_could_never_match():
    from meshcore import ConfigError
    from meshcore.config import load

    cfg = {
        "listeners": [{"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"}],
        "policy": {
            "default": "all-unauthenticated",
            "rules": [{"listener": "inbound", "path_prefix": "admin"}],
        },
    }
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].path_prefix: .*must start with '/'"):
        load(cfg)


def test_a_rule_names_its_listeners_once_and_only_known_ones():
    from meshcore import ConfigError
    from meshcore.config import load

    def cfg(rule: dict) -> dict:
        return {
            "listeners": [{"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"}],
            "policy": {"rules": [rule]},
        }

    with pytest.raises(ConfigError, match=r"policy.rules\[0\]: .*give listener or listeners, not both"):
        load(cfg({"listener": "inbound", "listeners": ["inbound"]}))
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].listeners\[1\]: .*'inbond'"):
        load(cfg({"listeners": ["inbound", "inbond"]}))
    core = load(cfg({"path_prefix": "/admin"})).to_core()
    assert core["policy"]["rules"][0]["listeners"] == [], "no listener named: every inbound one"
    core = load(cfg({"listener": "inbound"})).to_core()
    assert core["policy"]["rules"][0]["listeners"] == ["inbound"]


def test_a_rule_without_a_listener_protects_its_path_on_every_inbound_listener(callers):
    policy = {
        "default": "all-authenticated",
        "rules": [{"path_prefix": "/admin", "identities": ["spiffe://mesh.local/ns/ops/sa/*"]}],
    }
    _, outs = callers(policy)
    check_cases(
        policy,
        outs,
        [("web", "GET", "/admin", 403), ("alice", "GET", "/admin", 200), ("web", "GET", "/", 200)],
    )


CONSOLE = {"x-console": "1"}
ROUTES = [
    # Routing, not the path, decides that a request is the console's.
    {"name": "console", "listener": "inbound", "headers": CONSOLE, "backends": [{"service": "app"}]},
    {
        "name": "maintenance",
        "listener": "inbound",
        "path_prefix": "/maintenance",
        "direct_response": {"status": 200, "body": "down for maintenance"},
    },
    {"name": "app", "listener": "inbound", "backends": [{"service": "app"}]},
]


def test_a_rule_for_routes_protects_them_and_a_protected_path_on_them_needs_both(callers):
    policy = {
        "default": "all-authenticated",
        "rules": [
            {"name": "ops", "routes": ["console", "maintenance"], "identities": [IDS["alice"]]},
            {"name": "web-reads", "routes": ["console"], "methods": ["GET"], "identities": [IDS["web"]]},
            {"name": "ops-admin", "path_prefix": "/admin", "identities": [IDS["alice"]]},
        ],
    }
    inbound, outs = callers(policy, routes=ROUTES)
    check_cases(
        policy,
        outs,
        [
            ("alice", "POST", "/x", 200, CONSOLE),
            ("web", "GET", "/x", 200, CONSOLE),
            ("web", "POST", "/x", 403, CONSOLE),
            ("bob", "GET", "/x", 403, CONSOLE),
            # The same path on an unprotected route: the default decides.
            ("bob", "GET", "/x", 200),
            # A route that answers itself answers only callers its rules allow.
            ("bob", "GET", "/maintenance", 403),
            ("alice", "GET", "/maintenance", 200),
            # The console's rules let web read, but /admin is ops' alone.
            ("web", "GET", "/admin/x", 403, CONSOLE),
            ("alice", "GET", "/admin/x", 200, CONSOLE),
        ],
        ROUTES,
    )
    denied = authz(inbound, "deny")
    assert denied == {"protected:route:console": 2, "protected:route:maintenance": 1, "protected:/admin": 1}
    said = explained(policy, "web", "GET", "/admin/x", ROUTES, CONSOLE)
    assert said["route"] == "console"
    assert said["protected_by"] == ["route console", "/admin"]
    assert said["rule"] == "protected:/admin"


def test_a_rule_names_only_inbound_routes_of_its_listeners():
    from meshcore import ConfigError
    from meshcore.config import load

    def cfg(rule: dict) -> dict:
        return {
            "listeners": [
                {"name": "inbound", "bind": "127.0.0.1:0", "direction": "inbound"},
                {"name": "admin-in", "bind": "127.0.0.1:0", "direction": "inbound"},
                {"name": "outbound", "bind": "127.0.0.1:0", "direction": "outbound"},
            ],
            "routes": [
                {"name": "console", "listener": "inbound", "backends": [{"service": "app"}]},
                {"name": "egress", "listener": "outbound", "backends": [{"service": "app"}]},
                {"listener": "inbound", "backends": [{"service": "app"}]},  # route-2, unnamed
            ],
            "services": [{"name": "app", "endpoints": [{"addr": "127.0.0.1:1"}]}],
            "policy": {"rules": [rule]},
        }

    with pytest.raises(ConfigError, match=r"policy.rules\[0\].routes\[0\]: .*'consle'"):
        load(cfg({"routes": ["consle"]}))
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].routes\[0\]: .*not the rule's \('admin-in'\)"):
        load(cfg({"listener": "admin-in", "routes": ["console"]}))
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].routes\[0\]: .*outbound listener 'outbound'"):
        load(cfg({"routes": ["egress"]}))
    with pytest.raises(ConfigError, match=r"policy.rules\[0\].routes\[0\]: 'route-2' is an unnamed route's"):
        load(cfg({"routes": ["route-2"]}))
    with pytest.raises(ConfigError, match=r"policy.rules\[0\]: .*path_prefix or routes, not both"):
        load(cfg({"routes": ["console"], "path_prefix": "/admin"}))
    core = load(cfg({"listener": "inbound", "routes": ["console"]})).to_core()
    assert core["policy"]["rules"][0]["routes"] == ["console"]
