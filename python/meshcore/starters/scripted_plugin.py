"""The scripted proxy's hooks: each runs only on the routes its config entry names."""

from meshcore import Response


def on_request(req):
    # Refuse a request without a key before it reaches the upstream.
    if "x-api-key" not in req.headers:
        return Response(401, {"content-type": "text/plain"}, "an x-api-key header is required\n")
    return None


def on_response(req, resp):
    resp.headers["x-served-by"] = "meshcore"
