"""Where a proxy keeps its state (history, the upgrade socket): the config's `state_dir`, by
default beside the config file: /etc/mesh.toml -> /etc/mesh.state/."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import Config


def state_dir_of(config: Config) -> Optional[Path]:
    """`state_dir`, relative to the config's directory; by default `<config stem>.state` beside
    the config file; None for a config given as a dict without one (history in memory only)."""
    if config.state_dir:
        return config.resolve_path(config.state_dir).absolute()
    if config._source is None:
        return None
    source = Path(config._source)
    return (source.parent / f"{source.stem}.state").absolute()
