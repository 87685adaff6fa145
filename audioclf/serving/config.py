"""``audioclf serve`` / :func:`~audioclf.serving.app.create_app` settings (importable without the ``serve`` extra)."""
from __future__ import annotations

from dataclasses import dataclass

from ..predictions import DEFAULT_TOP_K
from ..settings import AMP_HELP, DEVICE_HELP, option


@dataclass
class ServeConfig:
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port (0: any free one)", min=0, max=65535)
    max_batch: int = option(32, "requests per forward pass at most", min=1)
    max_wait_ms: float = option(10.0, "how long a batch waits for requests still arriving", min=0)
    micro_batching: bool = option(True, "batch concurrent requests (--no-micro-batching: one forward pass per "
                                        "request)")
    queue_size: int = option(256, "requests waiting at most; more get 503", min=1)
    max_body_mb: float = option(20.0, "largest request body (413 above)", gt=0)
    max_seconds: float = option(600.0, "longest audio (413 above)", gt=0)
    top_k: int = option(DEFAULT_TOP_K, "labels per answer unless the request sets top_k", min=1)
    device: str = option("cpu", DEVICE_HELP)
    amp: bool = option(False, AMP_HELP)
    log_level: str = option("info", "server log level", choices=("critical", "error", "warning", "info", "debug"))
