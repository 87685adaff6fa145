"""The HTTP service: a FastAPI app around a trained run, with micro-batching.

Endpoints
---------
``GET /``               the web page (``static/index.html``: upload, drag-and-drop or record, bars, event timeline)
``GET /health``         ``{"status": "ok", "model": "cnn", "labels": 10, "precision": "float32"}`` (``bf16``: ``--amp``)
``GET /v1/labels``      ``{"labels": [...], "task", "sample_rate", "clip_seconds"}``
``GET /v1/stats``       requests served, forward batches run and a histogram of batch sizes
``POST /v1/classify``   audio in, labels out; ``/docs`` has the OpenAPI page

``POST /v1/classify`` takes either a multipart form with the audio in the field ``file`` (``curl -F file=@x.wav``)
or the raw file as the request body, whatever its content type (``curl --data-binary @x.wav -H 'Content-Type:
audio/wav'``). Any format :func:`audioclf.audio.read_audio` decodes is accepted. The answer is one JSON object of
the same shape for audio of every length, ``{"predictions": [{"label", "score"}, ...], "events": [...],
"duration": s, "window": s}``:

* ``predictions``: best first, the top ``top_k`` labels (and for multi-label runs every further label at or above
  its threshold) for the whole recording (the half-overlapping windows' logits averaged, as ``Classifier.predict``);
* ``events``: ``[{"label", "start", "end", "peak"}]`` from :func:`audioclf.longform.events` over those windows
  (query ``threshold``, ``median_filter``, ``min_duration``); audio no longer than the window is one window;
* ``duration``: the audio's length and ``window``: the model's window, in seconds.

Errors are JSON ``{"error": slug, "detail": text}``: 400 (malformed multipart, no ``file`` field, empty body, bad
query), 413 (body over ``max_body_mb``, checked on ``Content-Length`` and counted while the body streams in, or
audio longer than ``max_seconds``), 415 (not decodable audio), 503 (request queue full; ``Retry-After: 1``).
Bodies: :mod:`.uploads`; batching: :mod:`.batcher`. Uploads only FFmpeg reads are decoded in worker processes
(:mod:`audioclf.isolated_decoding`), so a decoder crash or hang costs that request a 415.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..isolated_decoding import DecoderPool
from ..settings import check_fields
from .api import CLASSIFY_BODY, CLASSIFY_RESPONSES, parse_query, query_openapi
from .batcher import Batcher
from .config import ServeConfig
from .errors import SLUGS, ApiError, error_json, error_response
from .uploads import ISOLATED_DECODE_SECONDS, Upload, decode_upload

STATIC = Path(__file__).resolve().parent / "static"
CLASSIFY_PATH = "/v1/classify"


def create_app(run_dir, **settings) -> FastAPI:
    """The service for the run in ``run_dir``; see the module docstring. ``settings``: :class:`ServeConfig` fields
    (``host``, ``port`` and ``log_level`` are the server's, not the app's). The model is loaded here."""
    from contextlib import asynccontextmanager

    from ..inference import load

    cfg = ServeConfig(**settings)
    check_fields(cfg)
    clf = load(run_dir, cfg.device, cfg.amp)
    members = clf.config.get("member_models")  # an ensemble: "cnn+crnn+cnn"
    model_name = "+".join(m["model"] for m in members) if members else clf.config.get("model", "model")
    batcher = Batcher(clf, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms, queue_size=cfg.queue_size,
                      micro_batching=cfg.micro_batching)
    upload_dir = tempfile.mkdtemp(prefix="audioclf-serve-")
    decoders = DecoderPool(timeout=ISOLATED_DECODE_SECONDS)  # for uploads only FFmpeg reads; started on demand

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.close()
            shutil.rmtree(upload_dir, ignore_errors=True)

    app = _Service(title="audioclf", version=_version(), docs_url=None, redoc_url=None,
                   description=f"Audio classification with the `{model_name}` model of `{Path(run_dir).name}` "
                               f"({len(clf.labels)} labels). POST audio to `/v1/classify`.",
                   lifespan=lifespan)
    app.state.classifier, app.state.batcher, app.state.upload_dir = clf, batcher, upload_dir
    app.state.decoders, app.state.batch_sizes = decoders, batcher.batch_sizes
    app.state.limits = {"max_body_bytes": int(cfg.max_body_mb * 1024 * 1024), "max_seconds": cfg.max_seconds}
    weakref.finalize(app, shutil.rmtree, upload_dir, ignore_errors=True)
    weakref.finalize(app, decoders.close)
    add_error_handlers(app)
    add_info_routes(app, model_name)
    add_docs_page(app)
    add_classify_route(app, cfg.top_k)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error answered as JSON ``{"error", "detail"}`` (:func:`error_response`)."""

    @app.exception_handler(ApiError)
    @app.exception_handler(Exception)
    async def _answer_error(request, exc: Exception):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return error_json(exc.status_code, SLUGS.get(exc.status_code, "error"), exc.detail,
                          getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_json(400, "bad_request", detail)


def add_info_routes(app: FastAPI, model_name: str) -> None:
    """``/`` (the web page), ``/health``, ``/v1/labels`` and ``/v1/stats``."""
    clf, batcher = app.state.classifier, app.state.batcher
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health", summary="Liveness and the model served")
    async def health():
        return {"status": "ok", "model": model_name, "labels": len(clf.labels),
                "precision": "bf16" if clf.amp else "float32"}

    @app.get("/v1/labels", summary="The labels the model predicts")
    async def labels():
        return {"labels": clf.labels, "task": "multi_label" if clf.multilabel else "single_label",
                "sample_rate": clf.sample_rate, "clip_seconds": clf.clip_samples / clf.sample_rate}

    @app.get("/v1/stats", summary="Requests served and forward-pass batch sizes")
    async def stats():
        batches = sum(batcher.batch_sizes.values())
        return {"served": batcher.served, "batches": batches,
                "mean_batch": batcher.served / batches if batches else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(batcher.batch_sizes.items())},
                "micro_batching": batcher.micro_batching, "max_batch": batcher.max_batch,
                "max_wait_ms": batcher.max_wait_ms}


def add_classify_route(app: FastAPI, top_k: int) -> None:
    """``POST /v1/classify``: receive, decode, queue for the batcher, answer (:func:`answer`)."""
    clf, batcher, decoders = app.state.classifier, app.state.batcher, app.state.decoders
    limits = app.state.limits

    @app.post(CLASSIFY_PATH, summary="Classify an audio file", responses=CLASSIFY_RESPONSES,
              openapi_extra={"requestBody": CLASSIFY_BODY, "parameters": query_openapi(top_k)})
    async def classify(request: Request):
        """Audio as the multipart field `file`, or as the raw request body (any content type).

        Returns `{"predictions": [{"label", "score"}], "events": [{"label", "start", "end", "peak"}], "duration",
        "window"}` for audio of every length (predictions best first; times in seconds).
        """
        query = parse_query(request.query_params)
        upload = Upload(request, app.state.upload_dir, limits["max_body_bytes"])
        batcher.announce()
        queued = False
        try:
            source = await upload.receive()
            try:
                clip = await decode_upload(source, clf.sample_rate, limits["max_seconds"], decoders)
            finally:
                upload.remove()
            queued = True
            result = await batcher.submit(clip, True)
        finally:
            upload.remove()
            if not queued:
                batcher.withdraw()
        return answer(clf, result, len(clip), query, top_k)

    app.classify = classify


def answer(clf, result, samples: int, query: dict, top_k: int) -> JSONResponse:
    """The JSON answer for one clip of ``samples`` samples: ranked labels and events over its windows."""
    from ..longform import events as find_events

    preds = clf.ranked(result.scores, min(query["top_k"] or top_k, len(clf.labels)))
    thr = query["threshold"]
    if thr is None:
        thr = clf.thresholds if clf.multilabel else 0.5
    found = find_events(result.times, result.window_scores, clf.labels, threshold=thr,
                        min_duration=query["min_duration"], median_filter=query["median_filter"])
    return JSONResponse({"predictions": preds, "events": found, "duration": samples / clf.sample_rate,
                         "window": clf.clip_samples / clf.sample_rate})


def add_docs_page(app: FastAPI) -> None:
    """``/docs``: the OpenAPI page with its Swagger UI assets served from the ``swagger-ui-bundle`` package under
    ``/docs-assets``, so the page works with no internet (FastAPI's own loads them from a CDN)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


class _Service(FastAPI):
    """The FastAPI app, with ``POST /v1/classify`` handed straight to its endpoint (:attr:`classify`) before
    FastAPI's and Starlette's middleware and routing, a large share of a loaded server's time. The route stays declared for the OpenAPI page; other methods on its path
    reach the router as usual (405). Errors are answered as the app's exception handlers answer them
    (:func:`error_response`)."""

    classify: Callable[[Request], Awaitable[Response]]  # the endpoint, set by create_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CLASSIFY_PATH:
            return await super().__call__(scope, receive, send)
        try:
            response = await self.classify(Request(scope, receive, send))
        except Exception as exc:  # noqa: BLE001 -- answered as the app's handlers answer it
            response = error_response(exc)
        await response(scope, receive, send)


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "0"
