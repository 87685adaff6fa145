"""One training run, top to bottom: set-up -> epochs (steps, validation, the best checkpoint) -> test report."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..augment import AugmentConfig, mixup
from ..checkpoint import save_run
from ..devices import resolve_device
from ..evaluation.evaluate import build_report
from ..evaluation.metrics import tune_thresholds
from ..evaluation.plots import plot_curves
from ..inference import clip_logits, scores_from_logits
from ..run_folder import release
from . import autoconfig, distributed
from .config import TrainConfig, TrainError
from .outputs import ProgressLines, test_best_checkpoint, write_metrics
from .samplers import seed_step
from .schedule import StopRule, warmup_stable_decay
from .settings import AUTO_SETTINGS, checked_config, resolve_amp
from .setup import Net, TrainingData, build_net, clip_samples, prepare_data, probe_augmentation, training_loader
from .state import TrainState, load_state, restore_state, save_state
from .validation import selection_score, write_validation


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool, smoothing: float,
            class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy with soft targets (single-label) or binary cross-entropy (multi-label)."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=class_weights)
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=smoothing)


def train_step(step_model, model, optimizer, ema, wave, target, lr: float, cfg: TrainConfig, multilabel: bool,
               class_weights) -> float:
    """One optimiser step on a batch (mixup, autocast, clipping, EMA update); returns the batch loss. Raises
    ``TrainError`` before the step when the gradients are not finite: the weights would turn NaN and every later
    epoch, checkpoint and report with them."""
    aug = model.frontend.augment_config  # --mixup, --no-augment and --aug mixup_alpha=... all end up here
    if not multilabel and aug.mixup_alpha > 0 and torch.rand(()) < aug.mixup_prob:
        wave, target = mixup(wave, target, aug.mixup_alpha)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        logits = step_model(wave)
    loss = loss_fn(logits.float(), target, multilabel, cfg.label_smoothing, class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # the norm before clipping (an infinite limit clips nothing): one reduction, checked on every step
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if not torch.isfinite(norm):
        raise TrainError(f"the gradients are not finite (norm {norm.item()}, loss {loss.item():.4g}): training "
                         "diverged or a kernel computed them wrongly; nothing of this step was applied. Try a lower "
                         "--lr, or --no-amp / --no-compile")
    optimizer.step()
    if ema:
        ema.update(model)
    return loss.item()


def validate(model, audio, targets: np.ndarray, labels, clip_samples: int, multilabel: bool, device):
    """Whole-clip validation: ``(loss, accuracy or mAP, scores (clips, classes))``."""
    logits = clip_logits(model, audio, clip_samples, device=device)
    val_loss = loss_fn(torch.from_numpy(logits).float(), torch.from_numpy(targets), multilabel, 0.0, None).item()
    scores = scores_from_logits(logits, multilabel)
    report = build_report(scores, targets, labels, multilabel)
    return val_loss, report["mAP"] if multilabel else report["accuracy"], scores


@dataclass
class Loop:
    """What the epochs of one run work with."""

    cfg: TrainConfig
    run: Path
    d: TrainingData
    net: Net
    device: torch.device
    dist: distributed.DistInfo
    loader: object
    sampler: object
    dataset: object
    stop: StopRule
    config: dict  # config.json as the best checkpoint is saved with it
    warmup_steps: int
    clocks: tuple = (0.0, 0.0, 0.0)  # perf_counter at the training loop's start, (process_time, perf_counter) at the
    # command's, each moved back by what earlier processes of a resumed run spent

    def spent(self) -> list[float]:
        """Training-loop, CPU and wall seconds so far, a resumed run's earlier processes included."""
        now = time.perf_counter()
        return [now - self.clocks[0], time.process_time() - self.clocks[1], now - self.clocks[2]]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def checkpoint(self, state: TrainState) -> None:
        """Save the training state (rank 0), for ``--resume``."""
        if self.dist.main:
            state.stop, state.spent = self.stop.state(), self.spent()
            save_state(self.run, self.net.model, self.net.optimizer, self.net.ema, self.cfg, state)


def train_run(data, out, **settings) -> dict:
    """One model trained into ``out`` with ``settings`` (:class:`TrainConfig` fields, the start given), checked and
    claimed first; the test report. The members of an ensemble and the candidate starts train this way."""
    started = time.process_time(), time.perf_counter()
    cfg, augment = checked_config(out, settings)
    try:
        return train_single(data, out, cfg, augment, started=started)
    finally:
        release(out)


def train_single(data, out, cfg: TrainConfig, augment: AugmentConfig, start_reason: str | None = None,
                 started: tuple | None = None) -> dict:
    """Train one model on ``data`` into ``out`` (one rank of several under torchrun); returns the test report.
    ``start_reason``: why this start was chosen, when it was; ``started``: ``(process_time, perf_counter)`` at the
    command's start."""
    started = started or (time.process_time(), time.perf_counter())
    loop, state = set_up(data, out, cfg, augment, start_reason)
    before = state.spent  # a resumed run's earlier processes, to their last saved state
    loop.clocks = (time.perf_counter() - before[0], started[0] - before[1], started[1] - before[2])
    run_epochs(loop, state)
    train_seconds = loop.spent()[0]
    del loop.net.step_model, loop.loader  # the DDP wrapper holds the process group: gone before the group is
    report = {}
    if loop.dist.main:  # rank 0 tests the best checkpoint and writes the report; the others wait, then leave
        plot_curves(state.rows, loop.run / "curves.png")
        validation = {k: v for r in state.rows if r["epoch"] == state.best_epoch for k, v in r.items()
                      if k.startswith("val_")}
        report = test_best_checkpoint(loop.run, loop.device, loop.d, clip_samples(loop.d.settings), state.thresholds,
                                      state.best_epoch, train_seconds, validation, loop.clocks[1:])
    distributed.shutdown()
    return report


def set_up(data, out, cfg: TrainConfig, augment: AugmentConfig, start_reason: str | None) -> tuple[Loop, TrainState]:
    """Devices and processes, the data, the model and its optimiser, the batches, the stop rule; the state to start
    from (restored with ``--resume``)."""
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dist_info, dist_device = distributed.setup_from_env(cfg.device)  # torchrun: one process per device
    device = dist_device or device
    cfg.nproc = dist_info.world_size  # recorded in config.json: the processes that actually trained
    saved = load_state(run) if cfg.resume else None
    if cfg.amp is None and saved:  # an automatic choice resumes as it ran, even on other hardware
        cfg.amp = saved[1]["config"].get("amp")
    cfg.amp = resolve_amp(cfg.amp, device)  # recorded too: what ran, not "auto"
    d = prepare_data(cfg, data, run, dist_info.main, saved[1].get("settings") if saved else None)
    augment = probe_augmentation(d, cfg, augment)
    if start_reason:
        d.settings["reasons"][f"pretrained={cfg.pretrained}"] = start_reason
    net = build_net(cfg, d, augment, device, dist_info.world_size)
    dataset, sampler, loader = training_loader(d, cfg, clip_samples(d.settings), dist_info.rank, dist_info.world_size)
    s, steps_per_epoch = d.settings, len(loader)
    target = autoconfig.target_steps(s["model"], bool(d.init))
    stop = StopRule(s["epochs"] * steps_per_epoch, steps_per_epoch,
                    cfg.patience or autoconfig.choose_patience(target, steps_per_epoch), min_steps=target // 2)
    loop = Loop(cfg, run, d, net, device, dist_info, loader, sampler, dataset, stop, run_config(cfg, d, data),
                max(1, int(cfg.warmup_epochs * steps_per_epoch)))
    describe(loop)
    state = TrainState(settings={k: s[k] for k in AUTO_SETTINGS})
    if cfg.resume and saved is None:
        print(f"--resume: no saved state in {run / 'state'}; starting from the beginning")
    if saved:
        state = restore_state(saved, net.model, net.optimizer, net.ema, cfg)
        state.settings = {k: s[k] for k in AUTO_SETTINGS}
        loop.stop = StopRule(**state.stop) if state.stop else stop
        loop.config.update(best_epoch=state.best_epoch, **({"thresholds": state.thresholds} if state.thresholds else {}))
        epoch, batch, _ = state.next_batch()
        print(f"resumed from {run / 'state'}: epoch {epoch}, batch {batch}, step {state.step}")
    return loop, state


def run_config(cfg: TrainConfig, d: TrainingData, data) -> dict:
    """``config.json``'s fields that describe the run (the checkpoint adds the model's own)."""
    s = d.settings
    return {"labels": d.labels, "task": "multi_label" if d.multilabel else "single_label",
            "clip_seconds": s["clip_seconds"], "training": {**cfg.to_dict(), **s},
            "data": str(data), "data_sha256": d.manifest.fingerprint(),
            "split_sizes": {"train": len(d.train), "val": len(d.val), "test": len(d.test)},
            **({"duplicates": d.duplicates} if any(d.duplicates.values()) else {}),
            **({"test_groups_heard": list(d.test_groups_heard)} if d.test_groups_heard[0] else {}),
            **({"init": d.init.provenance()} if d.init else {})}


def describe(loop: Loop) -> None:
    s, n_params = loop.d.settings, sum(p.numel() for p in loop.net.model.parameters())
    print(f"model: {s['model']} {s['model_args']} ({n_params / 1e6:.2f} M parameters) on {loop.device}"
          f"{' with bf16 autocast' if loop.cfg.amp else ''}; "
          f"at most {s['epochs']} epochs x {loop.steps_per_epoch} steps; the learning rate decays after "
          f"{loop.stop.patience} epochs without validation improvement (from step {loop.stop.min_steps}), and "
          "training ends with the decay")


def run_epochs(loop: Loop, state: TrainState) -> None:
    """Epochs until the stop rule's decay ends (or the ceiling); each saves the best checkpoint and the state."""
    first, batch, running = state.next_batch()
    if state.epoch_done and loop.stop.finished(state.step):  # it had ended
        return
    for epoch in range(first, loop.d.settings["epochs"] + 1):
        t_epoch = time.perf_counter()
        lr, running = train_epoch(loop, state, epoch, batch if epoch == first else 0,
                                  running if epoch == first else [0.0, 0])
        end_epoch(loop, state, epoch, lr, running, time.perf_counter() - t_epoch)
        if loop.stop.finished(state.step):
            print(f"end: the decay finished at epoch {epoch}; best epoch {state.best_epoch}")
            break


def train_epoch(loop: Loop, state: TrainState, epoch: int, first_batch: int, running: list) -> tuple[float, list]:
    """The epoch's training steps from ``first_batch`` on; ``(the last learning rate, [loss sum, clips])``."""
    cfg, net, s = loop.cfg, loop.net, loop.d.settings
    net.step_model.train()
    if loop.d.init and cfg.freeze_backbone:  # a frozen backbone keeps its batch-norm statistics too
        for m in net.model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    loop.dataset.set_epoch(epoch)
    loop.sampler.set_epoch(epoch, first_batch * s["batch_size"])  # skip the batches done before an interruption
    total, count = running
    bar = tqdm(loop.loader, desc=f"epoch {epoch}", leave=False, disable=None, total=loop.steps_per_epoch,
               initial=first_batch)  # a bar on a terminal; elsewhere ProgressLines
    lines = ProgressLines(f"epoch {epoch}", loop.steps_per_epoch, enabled=bar.disable and loop.dist.main)
    lr = cfg.lr
    for batch, (wave, target) in enumerate(bar, start=first_batch):
        seed_step(cfg.seed + 7919 * loop.dist.rank, state.step)  # augmentation randomness from (seed, step)
        wave, target = wave.to(loop.device, non_blocking=True), target.to(loop.device, non_blocking=True)
        lr = warmup_stable_decay(state.step, loop.warmup_steps, loop.stop.decay_start, loop.stop.decay_steps, cfg.lr)
        try:
            loss = train_step(net.step_model, net.model, net.optimizer, net.ema, wave, target, lr, cfg,
                              loop.d.multilabel, net.class_weights)
        except TrainError as e:
            raise TrainError(f"epoch {epoch}, step {state.step + 1}: {e}") from None
        total, count, state.step = total + loss * len(wave), count + len(wave), state.step + 1
        lines.update(batch + 1, total / count)
        if cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0 and batch + 1 < loop.steps_per_epoch:
            state.epoch, state.batches_done, state.epoch_done, state.running = epoch, batch + 1, False, [total, count]
            loop.checkpoint(state)
    return lr, [total, count]


def end_epoch(loop: Loop, state: TrainState, epoch: int, lr: float, running: list, seconds: float) -> None:
    """Validate, keep the best checkpoint, print and write the epoch's metrics, advance the stop rule and save
    the state."""
    d, net = loop.d, loop.net
    row = {"epoch": epoch, "train_loss": distributed.all_reduce_mean(running[0] / max(1, running[1])), "lr": lr}
    score, scores, metric = (epoch, 0.0), None, None  # no validation data: keep the last epoch
    if d.val:
        val_loss, metric, scores = validate(net.evaluated(), d.audio(d.val), d.y[d.val], d.labels,
                                            clip_samples(d.settings), d.multilabel, loop.device)
        row.update(val_loss=val_loss, **({"val_mAP": metric} if d.multilabel else {"val_accuracy": metric}))
        score = selection_score(val_loss, metric, d.multilabel)
    score = distributed.broadcast_object(score)  # every rank validates the same model; rank 0's score decides
    row["seconds"] = seconds
    state.rows.append(row)
    improved = state.best is None or tuple(score) > tuple(state.best)
    if improved:
        keep_best(loop, state, epoch, score, scores)
    print(f"epoch {epoch:3d}/{d.settings['epochs']}  train_loss {row['train_loss']:.4f}"
          + (f"  val_loss {row['val_loss']:.4f}  val_{'mAP' if d.multilabel else 'acc'} {metric:.4f}" if d.val else "")
          + f"  lr {lr:.2e}  {row['seconds']:.1f}s" + ("  *" if improved else ""), flush=True)
    if loop.dist.main:
        write_metrics(loop.run, state.rows)
    decay = loop.stop.after_epoch(state.step, epoch - state.best_epoch)
    if decay:
        print(decay)
    state.epoch, state.batches_done, state.epoch_done, state.running = epoch, loop.steps_per_epoch, True, [0.0, 0]
    loop.checkpoint(state)


def keep_best(loop: Loop, state: TrainState, epoch: int, score, scores) -> None:
    """The epoch is the best so far: tune multi-label thresholds on its validation scores and save the checkpoint
    and the validation clips' scores (rank 0)."""
    d = loop.d
    state.best, state.best_epoch = list(score), epoch
    if d.multilabel and d.val:
        state.thresholds = tune_thresholds(d.y[d.val], scores).tolist()
    loop.config.update(best_epoch=epoch, **({"thresholds": state.thresholds} if state.thresholds else {}))
    if loop.dist.main:
        save_run(loop.run, loop.net.evaluated(), loop.config)
        if d.val:
            write_validation(loop.run, [str(d.manifest.items[i].path) for i in d.val], d.labels, d.y[d.val], scores)
