"""Admin token files: one `NAME TOKEN` per line (whitespace between), `#` starts a comment.
A caller presenting `Authorization: Bearer TOKEN` is known as NAME. Read by the config check,
the admin API (on each change, so an edited file applies without a restart) and the CLI."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Optional

__all__ = ["TokenFileError", "parse_tokens", "read_token_file", "match_token"]

# A guessable token is no token: 16 characters is the least (e.g. `openssl rand -hex 16` gives 32).
MIN_TOKEN_LENGTH = 16


class TokenFileError(ValueError):
    """The file cannot be read or a line is not `NAME TOKEN`; the message names file and line."""


def parse_tokens(text: str, where: str) -> list[tuple[str, str]]:
    """(name, token) per line, in file order."""
    tokens: list[tuple[str, str]] = []
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise TokenFileError(f"{where}: line {number}: expected 'NAME TOKEN', got {len(fields)} fields")
        name, token = fields
        if name in names:
            raise TokenFileError(f"{where}: line {number}: the name {name!r} is given twice")
        if len(token) < MIN_TOKEN_LENGTH:
            too_short = f"the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters"
            raise TokenFileError(f"{where}: line {number}: {too_short}")
        names.add(name)
        tokens.append((name, token))
    if not tokens:
        raise TokenFileError(f"{where}: no tokens (one 'NAME TOKEN' per line)")
    return tokens


def read_token_file(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TokenFileError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TokenFileError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_tokens(text, str(path))


def match_token(tokens: list[tuple[str, str]], presented: str) -> Optional[str]:
    """The name whose token equals `presented`. Every token is compared, each in constant time,
    so neither the match nor its position shows in the timing."""
    found = None
    given = presented.encode()
    for name, token in tokens:
        if hmac.compare_digest(token.encode(), given) and found is None:
            found = name
    return found
