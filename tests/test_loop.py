"""One training step and its loss (audioclf/training/loop.py): the loss functions, an optimiser step that learns,
the gradient clip, the EMA update, and a step refused before it applies non-finite gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from audioclf.augment import AugmentConfig
from audioclf.features import FrontendConfig
from audioclf.models import create_model
from audioclf.training.config import TrainConfig, TrainError
from audioclf.training.ema import ModelEma
from audioclf.training.loop import loss_fn, train_step

SR = 8000


def tiny_model():
    torch.manual_seed(0)
    return create_model("cnn", 2, FrontendConfig(sample_rate=SR, n_mels=16), AugmentConfig.off(), width=0.25)


def batch():
    t = torch.arange(SR // 2) / SR
    wave = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (300.0, 2000.0, 320.0, 1900.0)])
    return wave, F.one_hot(torch.tensor([0, 1, 0, 1]), 2).float()


def test_single_label_loss_is_smoothed_cross_entropy_and_multi_label_is_binary_cross_entropy():
    logits, target = torch.tensor([[2.0, -1.0], [0.5, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    smooth = 0.1 * 0.5 + (1 - 0.1) * target  # label smoothing spreads 0.1 over the two classes
    expected = -(smooth * logits.log_softmax(1)).sum(1).mean()
    assert loss_fn(logits, target, False, 0.1, None).item() == pytest.approx(expected.item(), rel=1e-6)
    p = torch.sigmoid(logits)
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert loss_fn(logits, target, True, 0.1, None).item() == pytest.approx(bce.item(), rel=1e-6)
    weights = torch.tensor([1.0, 3.0])  # class weights count the rarer class more
    assert loss_fn(logits, target, False, 0.0, weights).item() != pytest.approx(loss_fn(logits, target, False, 0.0, None).item())


def test_steps_lower_the_loss_and_the_ema_follows_the_weights():
    model, (wave, target) = tiny_model(), batch()
    cfg = TrainConfig(amp=False, mixup=0.0, grad_clip=5.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ema = ModelEma(model, 0.9)
    before = [p.detach().clone() for p in ema.module.parameters()]
    losses = [train_step(model, model, optimizer, ema, wave, target, 3e-3, cfg, False, None) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0] and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, ema.module.parameters())) and ema.steps == 30


def test_the_learning_rate_of_each_group_follows_its_scale():
    model, (wave, target) = tiny_model(), batch()
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr_scale": 0.5}], lr=1.0)
    train_step(model, model, optimizer, None, wave, target, 2e-3, TrainConfig(amp=False, mixup=0.0), False, None)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_a_step_with_non_finite_gradients_is_refused_before_it_changes_the_weights():
    model, (wave, target) = tiny_model(), batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TrainError, match="gradients are not finite"):
        train_step(model, model, optimizer, None, wave * float("nan"), target, 1e-3, TrainConfig(amp=False, mixup=0.0),
                   False, None)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
