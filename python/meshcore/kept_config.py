"""The running config as a proxy keeps it: small at any size (#18).

A validated `Config` is a pydantic model per listener, route, service and endpoint, each with
its dict and its set of fields given: 30 MB for a mesh of 10,000 services, kept alive for the
rare moments that read all of it (GET /config, the lifecycle's hash, a rebuild for a plugin).
A proxy keeps this instead:

- `settings`: the Config without its routes and services, for what is read at any time (admin,
  identity, discovery, plugins, listeners, the restart checks of a reload);
- the whole config as the JSON of the fields that were given, zlib-compressed (115 KB for that
  mesh), which `config()` validates again into an equal Config when one is asked for;
- the names of the services that take their endpoints from discovery, for an endpoint update
  (not every service's name: 10,000 small strings made during the load pin 4 MB of the
  interpreter's arenas that would otherwise go back to the system).
"""

from __future__ import annotations

import json
import weakref
import zlib
from typing import Optional

from pydantic_core import PydanticSerializationError

from .config import Config

__all__ = ["KeptConfig"]


class KeptConfig:
    """A validated Config, kept compact; `config()` gives it back whole."""

    def __init__(self, config: Config) -> None:
        # Shallow: shares the models of the other sections with `config`.
        self.settings: Config = config.model_copy(update={"routes": [], "services": []})
        # The services listed without endpoints: theirs come from discovery (update_endpoints).
        self.discovered: frozenset[str] = frozenset(s.name for s in config.services if not s.endpoints)
        self._held: Optional[Config] = None
        self._packed = b""
        try:
            given = config.__pydantic_serializer__.to_json(config, exclude_unset=True)
            self._packed = zlib.compress(given, 1)
        except PydanticSerializationError:  # text JSON cannot hold (a lone surrogate): kept as is
            self._held = config
        # The same object while its owner holds it (`proxy.config is config`), no longer.
        self._unpacked = weakref.ref(config)

    def config(self) -> Config:
        """The whole Config: the one given while something else holds it, else validated again
        from the kept JSON (for 10,000 services, about 0.3 s), equal to it with the same
        fields set, and dropped again once its callers let go of it."""
        config = self._held or self._unpacked()
        if config is None:
            # From Python objects, not with model_validate_json: pydantic's JSON parser keeps up
            # to 16,384 of the strings it reads in a cache of its own, spread over the
            # interpreter's arenas, which then cannot go back to the system.
            config = Config.model_validate(json.loads(zlib.decompress(self._packed)))
            config._base_dir, config._source = self.settings._base_dir, self.settings._source
            self._unpacked = weakref.ref(config)
        return config
