"""The admin API's OpenAPI document, built from the route table and each handler's YAML
docstring. A route whose docstring lacks a summary or responses is refused when the app is
built, so the document cannot fall behind the routes."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute
from starlette.schemas import SchemaGenerator

OPENAPI_VERSION = "3.1.0"


def describe(routes: list[BaseRoute], *, title: str, version: str) -> dict[str, Any]:
    generator = SchemaGenerator({"openapi": OPENAPI_VERSION, "info": {"title": title, "version": version}})
    document = generator.get_schema(routes)
    for endpoint in generator.get_endpoints(routes):
        operation = document["paths"].get(endpoint.path, {}).get(endpoint.http_method, {})
        missing = [key for key in ("summary", "responses") if key not in operation]
        if missing:
            route = f"{endpoint.http_method.upper()} {endpoint.path}"
            keys = ", ".join(missing)
            raise ValueError(f"admin route {route} is not described: the YAML in its docstring has no {keys}")
        operation.setdefault("operationId", endpoint.func.__name__)
        # YAML reads an unquoted 200 as a number; JSON and OpenAPI want "200".
        operation["responses"] = {str(code): response for code, response in operation["responses"].items()}
    # Starlette answers HEAD wherever it answers GET (SchemaGenerator leaves HEAD out).
    for operations in document["paths"].values():
        if "get" in operations:
            operations["head"] = _head_of(operations["get"])
    return document


def _head_of(get: dict[str, Any]) -> dict[str, Any]:
    return {
        "operationId": f"{get['operationId']}_head",
        "summary": get["summary"],
        "description": "As GET, with the same status and headers and no body.",
        "responses": {code: {"description": r["description"]} for code, r in get["responses"].items()},
    }
