"""Bearer-token check: 401 without a known token; the app learns who called in `x-user`.

Tokens come from MESHCORE_BEARER_TOKENS ("token=user,token=user"), with a demo default.
"""

import os

from meshcore import Response

TOKENS = dict(
    pair.split("=", 1)
    for pair in os.environ.get("MESHCORE_BEARER_TOKENS", "t0ken-alice=alice,t0ken-bob=bob").split(",")
    if "=" in pair
)


def on_request(req):
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    user = TOKENS.get(token) if scheme.lower() == "bearer" else None
    if user is None:
        return Response(401, {"www-authenticate": 'Bearer realm="meshcore"'}, "unauthorized\n")
    req.headers.remove("authorization")  # the token stops here
    req.headers["x-user"] = user
    return None
