"""HTTP service: ``create_app(RUN)`` builds a FastAPI app (web page at ``/``, JSON API under ``/v1``, docs at
``/docs``) that micro-batches concurrent requests into one forward pass. Run it with ``audioclf serve RUN``.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart); importing this package imports fastapi.
"""
from .app import create_app

__all__ = ["create_app"]
