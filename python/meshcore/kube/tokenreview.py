"""ServiceAccount tokens checked by the API server (TokenReview, authentication.k8s.io/v1).

A `TokenReviewer` is the identity service's token checker: `name_for(token)` answers the
workload's name, `NAMESPACE/SERVICEACCOUNT`, or None when the API server does not authenticate
the token (or authenticates someone who is not a ServiceAccount: a person's token names no workload).
When the API server cannot answer (down, or this control plane may not create tokenreviews), it
raises MeshcoreError rather than answer None: a valid workload must not be told its token is bad
because the API server was away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ..errors import MeshcoreError
from .api import KubeApi

__all__ = ["PATH", "TokenReviewer", "service_account_identities", "workload_name"]

log = logging.getLogger("meshcore.kube")

PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


def workload_name(username: str) -> Optional[str]:
    """`system:serviceaccount:NS:SA` -> `NS/SA`; None for any other user."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, _, account = username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
    if not namespace or not account or ":" in account:
        return None
    return f"{namespace}/{account}"


class TokenReviewer:
    """`reviewer(token)` (or `reviewer.name_for(token)`) -> "NS/SA" or None; see the module docstring.

    `audiences`: the token must be meant for one of these (sent as spec.audiences; the API server's
    own audience when empty). The answer's status.audiences must name one of them too: an API
    server that ignored spec.audiences would otherwise pass a token minted for someone else."""

    def __init__(self, kubeconfig: str | Path, *, audiences: Sequence[str] = (), timeout: float = 10.0):
        self.api = KubeApi(kubeconfig, timeout=timeout)
        self.audiences = list(audiences)
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self, token: str) -> Optional[str]:
        return self.name_for(token)

    def name_for(self, token: str) -> Optional[str]:
        if not token:
            return None
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        status = self._post(review)
        if not status.get("authenticated"):
            if status.get("error"):
                log.info("TokenReview: token not authenticated: %s", status["error"])
            return None
        username = str((status.get("user") or {}).get("username") or "")
        if self.audiences and not set(status.get("audiences") or ()) & set(self.audiences):
            log.warning(
                "TokenReview: the token of %r is not for %s (it is for %s); refused",
                username,
                ", ".join(self.audiences),
                ", ".join(status.get("audiences") or ()) or "no audience said",
            )
            return None
        name = workload_name(username)
        if name is None:
            log.warning("TokenReview: %r is authenticated but is not a ServiceAccount; refused", username)
        return name

    def _post(self, review: dict[str, Any]) -> dict[str, Any]:
        import httpx2

        where = f"TokenReview at {self.api.server}"
        try:
            response = self._http().post(PATH, json=review)
        except httpx2.HTTPError as e:
            raise MeshcoreError(f"{where}: {type(e).__name__}: {e}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 300:
            message = body.get("message") if isinstance(body, dict) else response.text[:200]
            raise MeshcoreError(f"{where}: {response.status_code} {message or response.reason_phrase}")
        if not isinstance(body, dict) or not isinstance(body.get("status", {}), dict):
            raise MeshcoreError(f"{where}: the answer is not a TokenReview with a status")
        return body.get("status") or {}

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self.api.client()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def service_account_identities(kubeconfig: str | Path, audiences: Sequence[str] = ()) -> Any:
    """The identity service's token checker for ServiceAccount tokens: the workload NS/SA may
    have the identity name `ns/NS/sa/SA` (spiffe://<trust domain>/ns/NS/sa/SA), as in Linkerd.
    `audiences` as for `TokenReviewer`."""
    reviewer = TokenReviewer(kubeconfig, audiences=audiences)

    def name_for(token: str) -> Optional[str]:
        workload = reviewer.name_for(token)
        if workload is None:
            return None
        namespace, account = workload.split("/", 1)
        return f"ns/{namespace}/sa/{account}"

    return name_for
