"""The exception hierarchy. The classes live in the native module so that Rust
and Python raise the very same types."""

from __future__ import annotations

from ._core import BindError, ConfigError, MeshcoreError, PluginError, TlsError

__all__ = ["MeshcoreError", "ConfigError", "BindError", "TlsError", "PluginError", "config_error"]


def config_error(
    problems: list[tuple[str, str]], source: str | None, headline: str = "invalid config"
) -> ConfigError:
    """Builds a ConfigError listing `(field path, reason)` pairs for `source`."""
    where = source or "<config>"
    lines = [f"{where}: {path}: {reason}" if path else f"{where}: {reason}" for path, reason in problems]
    err = ConfigError(headline + "\n  " + "\n  ".join(lines))
    err.source = source  # type: ignore[attr-defined]
    err.problems = problems  # type: ignore[attr-defined]
    return err
