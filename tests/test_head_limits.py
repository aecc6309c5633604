"""One set of head limits for every engine (src/http/limits.rs): an upstream
response with more header fields than the limit gets the same answer whether
the request went out on the own HTTP/1.1 client (a bodiless GET) or on hyper's
(a request with a body); the own client allowed 128 where hyper allowed 100."""

from __future__ import annotations

import httpx

from conftest import one_service


def answer_with(fields: int) -> bytes:
    head = "".join(f"x-field-{i}: {i}\r\n" for i in range(fields))
    return f"HTTP/1.1 200 OK\r\n{head}content-length: 2\r\n\r\nok".encode()


def test_too_many_response_fields_get_one_answer_on_both_clients(upstream, proxy):
    u = upstream(lambda *_: answer_with(110))
    p = proxy(one_service([u.addr]))
    with httpx.Client() as c:
        bodiless = c.get(p.url("outbound", "/a"))
        with_body = c.post(p.url("outbound", "/b"), content=b"payload")
    assert (bodiless.status_code, with_body.status_code) == (502, 502)


def test_fields_within_the_limit_pass_on_both_clients(upstream, proxy):
    u = upstream(lambda *_: answer_with(90))
    p = proxy(one_service([u.addr]))
    with httpx.Client() as c:
        bodiless = c.get(p.url("outbound", "/a"))
        with_body = c.post(p.url("outbound", "/b"), content=b"payload")
    assert (bodiless.status_code, with_body.status_code) == (200, 200)
    assert bodiless.headers["x-field-89"] == with_body.headers["x-field-89"] == "89"
