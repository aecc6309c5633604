"""`meshcore identity ...` subcommands (being built)."""

from __future__ import annotations

import argparse


def add_identity_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers the identity subcommands on the `meshcore` parser."""
