"""The scripted proxy's hooks: each runs only on the routes its config entry names."""

from typing import Any, Optional

from meshcore import Response


def on_request(req: Any) -> Optional[Response]:
    # Refuse a request without a key before it reaches the upstream.
    if "x-api-key" not in req.headers:
        return Response(401, {"content-type": "text/plain"}, "an x-api-key header is required\n")
    return None


def on_response(req: Any, resp: Any) -> None:
    resp.headers["x-served-by"] = "meshcore"
