"""Where a proxy keeps its state (history, the upgrade socket): the config's `state_dir`, by
default beside the config file: /etc/mesh.toml -> /etc/mesh.state/."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def state_dir_of(config: Any) -> Optional[Path]:
    """The state directory of a loaded `meshcore.config.Config`; None for a config given as a dict
    with no `state_dir` (nothing to keep beside). A relative `state_dir` is the config's directory's."""
    configured = getattr(config, "state_dir", None)  # the field lands with the config history
    source = getattr(config, "_source", None)
    base = Path(config._base_dir) if getattr(config, "_base_dir", None) else None
    if configured:
        path = Path(configured)
        return (path if path.is_absolute() or base is None else base / path).absolute()
    if source is None:
        return None
    config_path = Path(source)
    return (config_path.parent / f"{config_path.stem}.state").absolute()
