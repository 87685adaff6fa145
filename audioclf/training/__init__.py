"""Training: ``train(DATA, OUT, **settings)`` trains one model, an ensemble (``ensemble=K``), or the candidate
starts to keep one (no ``pretrained`` given); :mod:`.loop` is one run top to bottom."""
from __future__ import annotations


def train(data, out, **settings) -> dict:
    """Train on ``data`` (folder, CSV or folder + ``pattern``) into the run folder ``out``; returns the test report.
    ``settings`` are :class:`~audioclf.training.config.TrainConfig` fields."""
    import time

    from ..run_folder import release
    from .ensemble import train_ensemble
    from .loop import train_single
    from .selection import candidates, train_candidates
    from .settings import checked_config

    started = time.process_time(), time.perf_counter()
    cfg, augment = checked_config(out, settings)
    try:
        auto_start, (starts, start_reason) = cfg.pretrained is None, candidates(cfg, data, out)
        if len(starts) > 1:
            print(f"auto: pretrained: {start_reason}")
            return train_candidates(data, out, cfg, starts)
        if auto_start:
            cfg.pretrained = starts[0].pretrained
            print(f"auto: pretrained={cfg.pretrained}: {start_reason}")
        if cfg.ensemble > 1:
            return train_ensemble(data, out, cfg)
        return train_single(data, out, cfg, augment, start_reason if auto_start else None, started)
    finally:
        release(out)  # the folder checked_config claimed
