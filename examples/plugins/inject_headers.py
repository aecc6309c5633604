"""Header injection: a request id on the way in, the chosen zone on the way up, a stamp on the way out."""

import uuid


class Plugin:
    def on_request(self, req):
        if "x-request-id" not in req.headers:
            req.headers["x-request-id"] = uuid.uuid4().hex
        req.ctx["request_id"] = req.headers["x-request-id"]

    def on_upstream_request(self, req, endpoint):
        req.headers["x-upstream-zone"] = endpoint.zone

    def on_response(self, req, resp):
        resp.headers["x-request-id"] = req.ctx["request_id"]
        resp.headers["x-served-by"] = "meshcore"
