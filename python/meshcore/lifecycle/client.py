"""`meshcore upgrade --admin ADDR`: asks a running proxy to start its replacement (POST /upgrade)
and says how it went."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any, Optional

from .spawn import ANSWER_SLACK
from .upgrade import READY_TIMEOUT


def request_upgrade(admin: str, meshcore: Optional[str] = None) -> int:
    """Exit status: 0 once the new process serves, 1 with the reason if it failed (the running
    one keeps serving) or the admin API cannot be reached."""
    base = admin if "://" in admin else f"http://{admin}"
    body = json.dumps({"command": [meshcore]} if meshcore else {}).encode()
    request = urllib.request.Request(
        f"{base.rstrip('/')}/upgrade", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=READY_TIMEOUT + 2 * ANSWER_SLACK) as response:
            answer = _json(response.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        reason = _json(text.encode()).get("error") or text.strip() or e.reason
        print(f"meshcore upgrade: failed ({e.code}): {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"meshcore upgrade: cannot reach the admin API at {base}: {reason}", file=sys.stderr)
        return 1
    print(f"meshcore upgrade: process {answer.get('pid')} serves; the previous one is draining")
    return 0


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
