"""audioclf: labelled audio in, accurate, fast, deployable classifiers out.

The top-level names are imported lazily so that ``import audioclf`` stays cheap and the
torch-free ONNX predictor can import ``audioclf.audio`` without pulling in torch.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "train": ("audioclf.training", "train"),
    "load": ("audioclf.inference", "load"),
    "pretrained": ("audioclf.weights", "pretrained"),
    "evaluate": ("audioclf.evaluation.evaluate", "evaluate"),
    "adapt": ("audioclf.adaptation", "adapt_run"),
    "create_model": ("audioclf.models", "create_model"),
    "list_models": ("audioclf.models", "list_models"),
    "load_audio": ("audioclf.audio", "load_audio"),
    "AudioDecodeError": ("audioclf.audio", "AudioDecodeError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'audioclf' has no attribute {name!r}")
    module, attr = _LAZY[name]
    return getattr(import_module(module), attr)
