"""Who a bootstrap token belongs to: the identity service asks a `TokenChecker`, a callable
`name_for(token) -> identity name or None`. `StaticTokens` is the one read from a file or a
mapping; a Kubernetes TokenReview checker is another; `first_of` asks several in turn.

A checker may block (a network call): the service calls it from a worker thread. One that raises
makes the service answer 503, "cannot check the token", rather than "unknown token".
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable, Optional, Union

from .ca import PathLike

__all__ = ["StaticTokens", "TokenChecker", "first_of", "token_checker"]

TokenChecker = Callable[[str], Optional[str]]


class StaticTokens:
    """Each token maps to the one identity name it may request. From a mapping, or a file holding a
    JSON object or lines of "token name" ('#' comments). Errors never quote a token."""

    def __init__(self, tokens: Union[Mapping[str, str], PathLike]) -> None:
        table = dict(tokens) if isinstance(tokens, Mapping) else _parse_tokens(Path(tokens))
        if not table:
            raise ValueError("no bootstrap tokens configured")
        self._tokens = table

    def names(self) -> list[str]:
        return sorted(set(self._tokens.values()))

    def __call__(self, token: str) -> Optional[str]:
        # Compare against every token in constant time so response timing says nothing about them.
        found = None
        for candidate, name in self._tokens.items():
            if hmac.compare_digest(candidate.encode(), token.encode()):
                found = name
        return found


def token_checker(
    tokens: Optional[PathLike], token_review: Optional[str], audiences: Sequence[str] = ()
) -> TokenChecker:
    """The checker the command line asks for: bootstrap tokens from the file `tokens`, then
    Kubernetes ServiceAccount tokens checked by TokenReview through the kubeconfig `token_review`
    (`in-cluster`: the pod's own), meant for one of `audiences`. ValueError if neither is given."""
    if tokens is None and token_review is None:
        raise ValueError("give --tokens FILE or --token-review KUBECONFIG: how workloads prove who they are")
    if audiences and token_review is None:
        raise ValueError("--token-audience is for ServiceAccount tokens: it needs --token-review")
    checkers: list[TokenChecker] = [StaticTokens(tokens)] if tokens is not None else []
    if token_review is not None:
        from ..kube.tokenreview import service_account_identities

        checkers.append(service_account_identities(token_review, audiences))
    return first_of(*checkers)


def first_of(*checkers: TokenChecker) -> TokenChecker:
    """A checker asking each of `checkers` in turn: the first name one of them gives."""

    def name_for(token: str) -> Optional[str]:
        for checker in checkers:
            name = checker(token)
            if name is not None:
                return name
        return None

    return name_for


def _parse_tokens(path: Path) -> dict[str, str]:
    text = path.read_text()
    if text.lstrip().startswith("{"):
        table = json.loads(text)
        if not all(isinstance(v, str) for v in table.values()):
            raise ValueError(f"{path}: every token must map to an identity name string")
        return {str(k): str(v) for k, v in table.items()}
    table = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'token name'")
        if fields[0] in table:
            raise ValueError(f"{path}:{lineno}: duplicate token")
        table[fields[0]] = fields[1]
    return table
