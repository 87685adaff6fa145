"""HTTP service: ``create_app(RUN)`` builds a FastAPI app (web page at ``/``, JSON API under ``/v1``, docs at
``/docs``) that micro-batches concurrent requests into one forward pass. Run it with ``audioclf serve RUN``.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart); ``create_app`` imports fastapi when first used.
"""
__all__ = ["create_app"]


def __getattr__(name):
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(f"module 'audioclf.serving' has no attribute {name!r}")
