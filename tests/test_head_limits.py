"""One set of head limits for every engine (src/http/limits.rs): an upstream
response with more header fields than the limit gets the same answer whether
the request went out on the own HTTP/1.1 client (a bodiless GET) or on hyper's
(a request with a body); the own client allowed 128 where hyper allowed 100."""

from __future__ import annotations

import httpx
import pytest

from conftest import one_service


def answer_with(fields: int) -> bytes:
    head = "".join(f"x-field-{i}: {i}\r\n" for i in range(fields))
    return f"HTTP/1.1 200 OK\r\n{head}content-length: 2\r\n\r\nok".encode()


@pytest.mark.parametrize("fields, status", [(110, 502), (90, 200)])
def test_both_clients_give_one_answer_to_a_response_head(upstream, proxy, fields, status):
    u = upstream(lambda *_: answer_with(fields))
    p = proxy(one_service([u.addr]))
    with httpx.Client() as c:
        bodiless = c.get(p.url("outbound", "/a"))
        with_body = c.post(p.url("outbound", "/b"), content=b"payload")
    assert (bodiless.status_code, with_body.status_code) == (status, status)
    if status == 200:
        assert bodiless.headers["x-field-89"] == with_body.headers["x-field-89"] == "89"
