"""Model zoo. Importing this package registers every model; build one with :func:`create_model`."""
from . import cnn, efficientat, mobilenet, resnet, transformer  # noqa: F401  (registration)
from .base import AudioClassifier, Frontend
from .registry import create_model, list_models, register_model

__all__ = ["AudioClassifier", "Frontend", "create_model", "list_models", "register_model"]
