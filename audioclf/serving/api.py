"""``POST /v1/classify``'s query parameters (parsed without FastAPI's per-request parameter solving) and its
OpenAPI description."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError

CLASSIFY_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "audio/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


@dataclass(frozen=True)
class QueryParam:
    name: str
    type: type  # int or float
    default: float | None
    low: float
    high: float | None
    description: str
    odd: bool = False


QUERY = (  # /v1/classify's query parameters, parsed by parse_query and documented by query_openapi
    QueryParam("top_k", int, None, 1, None, "labels to return at least (multi-label runs add those above their thresholds); default {top_k}"),
    QueryParam("threshold", float, None, 0, 1, "event threshold (long audio); default 0.5, or the run's per-label "
                                                "thresholds"),
    QueryParam("median_filter", int, 1, 1, 99, "odd median-filter size over windows (long audio)", odd=True),
    QueryParam("min_duration", float, 0.0, 0, None, "drop shorter events, seconds"),
)


def parse_query(params) -> dict:
    """Name -> value of every :data:`QUERY` parameter, from the request's query parameters (defaults for those
    absent); ApiError 400 naming a bad one."""
    values = {}
    for p in QUERY:
        raw = params.get(p.name)
        if raw is None:
            values[p.name] = p.default
            continue
        try:
            value = p.type(raw)
        except ValueError:
            kind = "an integer" if p.type is int else "a number"
            raise ApiError(400, "bad_request", f"query parameter {p.name}: not {kind}: {raw!r}") from None
        if not (value >= p.low and (p.high is None or value <= p.high)):  # also refuses NaN
            bounds = f"at least {p.low}" if p.high is None else f"between {p.low} and {p.high}"
            raise ApiError(400, "bad_request", f"query parameter {p.name}: must be {bounds}, got {raw}")
        if p.odd and value % 2 == 0:
            raise ApiError(400, "bad_request", f"query parameter {p.name}: must be odd, got {raw}")
        values[p.name] = value
    return values


def query_openapi(top_k: int) -> list[dict]:
    """:data:`QUERY` as OpenAPI parameter objects."""
    out = []
    for p in QUERY:
        schema = {"type": "integer" if p.type is int else "number", "minimum": p.low}
        if p.high is not None:
            schema["maximum"] = p.high
        if p.default is not None:
            schema["default"] = p.default
        out.append({"name": p.name, "in": "query", "required": False, "schema": schema,
                    "description": p.description.format(top_k=top_k)})
    return out


CLASSIFY_RESPONSES = {
    200: {"description": "`{predictions, events, duration, window}` for audio of every length.",
          "content": {"application/json": {"example": {
              "predictions": [{"label": "3", "score": 0.91}, {"label": "8", "score": 0.04}],
              "events": [{"label": "3", "start": 0.0, "end": 0.75, "peak": 0.93}], "duration": 0.62,
              "window": 0.75}}}},
    400: {"description": "Malformed multipart, no `file` field, empty body or bad query"},
    413: {"description": "Body over the size limit or audio over the duration limit"},
    415: {"description": "Not decodable audio"},
    503: {"description": "Request queue full"},
}
