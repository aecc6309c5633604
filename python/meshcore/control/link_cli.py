"""`meshcore control serve --link ...`: the flags that link this control plane to others.

Kept apart from `cli.py` so the command's own module stays small; nothing heavy is imported
here (grpc loads when a link source is made)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .sources import Source

__all__ = ["add_link_arguments", "link_sources"]

TLS_FLAGS = ("link-cert", "link-key", "link-trust-anchors")


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="NAME=URL[,gateway=HOST:PORT,gateway-identity=SPIFFE-ID]",
        help="import the services of another cluster's control plane (repeatable); with gateway=, "
        "through that cluster's `meshcore gateway`",
    )
    parser.add_argument("--link-cert", metavar="FILE", help="certificate presented to linked control planes")
    parser.add_argument("--link-key", metavar="FILE", help="its private key (PEM)")
    parser.add_argument(
        "--link-trust-anchors",
        metavar="FILE",
        help="linked control planes must present a certificate from these",
    )


def link_sources(args: argparse.Namespace) -> list[Source]:
    """One source per `--link`, in the order given; ConfigError naming the flag that is wrong."""
    from .sources.link import LinkSource, LinkTls, parse_link

    links = [parse_link(text) for text in args.link]
    names = [link.name for link in links]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"--link {name}: linked twice; each link needs its own name")
    given = [f"--{flag}" for flag in TLS_FLAGS if getattr(args, flag.replace("-", "_"))]
    if given and len(given) != len(TLS_FLAGS):
        raise ConfigError(
            f"{', '.join(given)} given alone: mTLS to linked control planes needs --link-cert, "
            "--link-key and --link-trust-anchors together"
        )
    if given and not links:
        raise ConfigError(f"{given[0]} given without --link: there is no control plane to link to")
    tls = None
    if given:
        for flag in TLS_FLAGS:
            path = Path(getattr(args, flag.replace("-", "_")))
            if not path.is_file():
                raise ConfigError(f"--{flag} {path}: no such file")
        tls = LinkTls(Path(args.link_cert), Path(args.link_key), Path(args.link_trust_anchors))
    for link in links:
        if link.url.startswith("https:") and tls is None:
            raise ConfigError(
                f"--link {link.name}: {link.url} is https: give --link-cert, --link-key and "
                "--link-trust-anchors (this control plane's mTLS identity towards it)"
            )
    return [LinkSource(link, tls) for link in links]
