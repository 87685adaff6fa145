"""Error answers: JSON ``{"error": slug, "detail": text}`` with their HTTP status."""
from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

log = logging.getLogger("audioclf.serving")


class ApiError(Exception):
    """An error answer: ``status`` with JSON ``{"error": error, "detail": detail}``."""

    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_json(status: int, error: str, detail, headers=None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def error_response(exc: Exception) -> JSONResponse:
    """The answer to an exception raised by an endpoint: an :class:`ApiError`'s own status, anything else a 500
    (logged with its traceback)."""
    if isinstance(exc, ApiError):
        return error_json(exc.status, exc.error, exc.detail, exc.headers)
    log.error("unhandled error", exc_info=exc)
    return error_json(500, "internal_error", f"{type(exc).__name__}: {exc}")


SLUGS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
          415: "unsupported_media", 503: "overloaded"}
