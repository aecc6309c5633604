"""The admin API's OpenAPI description: valid OpenAPI 3, and the same set of operations as
the routes the app serves, each answering as it is described."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.routing import Route

import meshcore
from conftest import one_service
from meshcore.admin.api import build_app
from meshcore.admin.openapi import describe

OPERATIONS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+(; ?[\w.-]+=[\w.-]+)*")


@pytest.fixture
def admin(backend, proxy):
    p = proxy(one_service([backend().addr], admin=True))
    host, port = p.admin_address
    return p, f"http://{host}:{port}"


def test_the_description_is_structurally_valid_openapi_3(admin):
    _p, url = admin
    r = httpx.get(f"{url}/openapi.json")
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert re.fullmatch(r"3\.\d+\.\d+", doc["openapi"])
    assert doc["info"]["title"] == "meshcore admin API"
    assert doc["info"]["version"] == meshcore.__version__
    assert doc["paths"]
    operation_ids = []
    for path, operations in doc["paths"].items():
        assert path.startswith("/"), path
        for method, operation in operations.items():
            where = f"{method} {path}"
            assert method in OPERATIONS, where
            assert operation["summary"], where
            operation_ids.append(operation["operationId"])
            assert operation["responses"], where
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status), where
                assert response["description"], where
                for media_type, content in response.get("content", {}).items():
                    assert MEDIA_TYPE.fullmatch(media_type), where
                    assert "type" in content["schema"], where
    assert len(operation_ids) == len(set(operation_ids))


def test_every_route_is_described_and_every_description_is_a_route(admin):
    p, url = admin
    doc = httpx.get(f"{url}/openapi.json").json()
    described = {(path, method.upper()) for path, operations in doc["paths"].items() for method in operations}
    # "/config/history/{version:int}" is described as "/config/history/{version}".
    served = {(route.path_format, method) for route in build_app(p).routes for method in route.methods}
    assert described == served
    assert ("/plugins", "HEAD") in served and ("/shutdown", "POST") in served


def test_each_operation_answers_with_a_described_status_and_content_type(admin):
    p, url = admin
    doc = httpx.get(f"{url}/openapi.json").json()
    operations = [(path, method) for path, ops in doc["paths"].items() for method in ops]
    # Shutdown last: it stops the proxy.
    operations.sort(key=lambda op: op == ("/shutdown", "post"))
    assert operations[-1] == ("/shutdown", "post")
    streams = {"text/event-stream", "application/x-ndjson"}
    with httpx.Client() as client:
        for path, method in operations:
            described = doc["paths"][path][method]["responses"]
            with client.stream(method.upper(), f"{url}{path}") as r:
                # A stream (tap) is not read: it lasts until the client goes.
                if method == "head" or r.headers.get("content-type") not in streams:
                    r.read()
            status = str(r.status_code)
            assert status in described, f"{method} {path} answered {status}"
            content = described[status].get("content")
            if method == "head":
                assert r.content == b""
            else:
                assert content is not None, f"{method} {path} {status} has no described content"
                assert r.headers["content-type"] in content, f"{method} {path}"
    assert p.wait(5)


def test_a_route_without_a_description_is_refused():
    def undescribed(request):
        return None

    def summary_only(request):
        """---
        summary: Says nothing of its responses
        """

    with pytest.raises(ValueError, match=r"route GET /undescribed is not described.*summary, responses"):
        describe([Route("/undescribed", undescribed)], title="t", version="1")
    with pytest.raises(ValueError, match=r"route POST /summary-only is not described.*has no responses$"):
        describe([Route("/summary-only", summary_only, methods=["POST"])], title="t", version="1")
