"""What `meshcore tap` and `meshcore top` share: the ADMIN argument (host:port or a URL), the
`--token-file` option, and reading its first token."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from ..tokens import TokenFileError, read_token_file

__all__ = ["add_admin_arguments", "admin_base", "admin_token"]


def add_admin_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("admin", metavar="ADMIN", help="the proxy's admin API, host:port or a URL")
    p.add_argument(
        "--token-file", metavar="F", help="send the first token of this admin token file ('NAME TOKEN' lines)"
    )


def admin_base(admin: str) -> str:
    """The admin API's base URL, without a trailing slash."""
    return (admin if "://" in admin else f"http://{admin}").rstrip("/")


def admin_token(args: argparse.Namespace) -> Optional[str]:
    """The first token of `--token-file`, if given. Raises ValueError naming the option."""
    if args.token_file is None:
        return None
    try:
        return read_token_file(Path(args.token_file))[0][1]
    except TokenFileError as e:
        raise ValueError(f"--token-file: {e}") from None
