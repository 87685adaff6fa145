"""Model registry: ``@register_model`` adds a builder, ``create_model(name, ...)`` calls it by name."""
from __future__ import annotations

from typing import Callable

from ..augment import AugmentConfig
from ..features import FrontendConfig

_REGISTRY: dict[str, Callable] = {}


def register_model(builder: Callable) -> Callable:
    """Decorator: register ``builder(num_classes, frontend, augment, **kwargs)`` under its function name."""
    name = builder.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_description(name: str) -> str:
    """The first line of a registered builder's docstring."""
    return (_REGISTRY[name].__doc__ or "").strip().splitlines()[0] if name in _REGISTRY else ""


def create_model(name: str, num_classes: int, frontend: FrontendConfig | dict | None = None,
                 augment: AugmentConfig | dict | None = None, **kwargs):
    """Build a registered model. ``frontend``/``augment`` take configs or plain dicts (as stored in config.json)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(frontend, dict):
        frontend = FrontendConfig(**frontend)
    if isinstance(augment, dict):
        augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()})
    model = _REGISTRY[name](num_classes, frontend or FrontendConfig(), augment or AugmentConfig(), **kwargs)
    model.model_name, model.model_args = name, dict(kwargs)
    return model
