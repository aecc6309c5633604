"""The documents a directory source serves: TOML or YAML files of `[[services]]` tables, as in a
proxy config (a service's name, and endpoints with addr, zone, cluster, identity, weight).

An endpoint is validated by the proxy config's own `Endpoint` model, with what only the control
plane carries added (`weight`, a `protocol` hint). Errors are `(field path, reason)`, as the proxy
config's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import Endpoint
from .protocol import EndpointWire
from .sources import endpoint

__all__ = ["DocumentError", "SUFFIXES", "read_document"]

SUFFIXES = (".toml", ".yaml", ".yml")


class DocumentEndpoint(Endpoint):
    weight: int = Field(default=1, ge=0, le=1_000_000)
    protocol: Optional[Literal["http1", "http2", "opaque"]] = None


class DocumentService(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    # The default protocol hint of the service's endpoints ("auto": none).
    protocol: Literal["auto", "http1", "http2", "opaque"] = "auto"
    endpoints: list[DocumentEndpoint] = []


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    services: list[DocumentService] = []


class DocumentError(ValueError):
    """A document refused: `problems` lists (field path, reason)."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]):
        self.path = path
        self.problems = problems
        lines = [f"{path}: {where}: {why}" if where else f"{path}: {why}" for where, why in problems]
        super().__init__("\n".join(lines))


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    return path


def _parse(text: str, path: Path) -> Any:
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def read_document(path: Path) -> dict[str, list[EndpointWire]]:
    """The services a document defines, name -> endpoints; DocumentError if it is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DocumentError(path, [("", f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError as e:
        raise DocumentError(path, [("", f"not UTF-8 text (byte {e.start}): {e.reason}")]) from None
    try:
        data = _parse(text, path)
    except Exception as e:  # noqa: BLE001 - parser errors vary by library
        raise DocumentError(path, [("", f"cannot parse: {e}")]) from None
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise DocumentError(path, [("", "expected a table/mapping with [[services]] at the top level")])
    try:
        document = Document.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            reason = "unknown field" if err["type"] == "extra_forbidden" else str(err["msg"])
            problems.append((_field_path(err["loc"]), reason.removeprefix("Value error, ")))
        raise DocumentError(path, problems) from None
    services: dict[str, list[EndpointWire]] = {}
    for i, service in enumerate(document.services):
        if service.name in services:
            raise DocumentError(path, [(f"services[{i}].name", f"duplicate service name {service.name!r}")])
        default_protocol = None if service.protocol == "auto" else service.protocol
        services[service.name] = [
            endpoint(
                e.addr,
                zone=e.zone,
                cluster=e.cluster,
                identity=e.identity,
                weight=e.weight,
                protocol=e.protocol or default_protocol,
            )
            for e in service.endpoints
        ]
    return services
