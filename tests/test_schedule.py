"""The learning-rate schedule and the rule that ends training from the validation curve
(audioclf/training/schedule.py)."""
import math

import pytest

from audioclf.training.schedule import DECAY_SHARE, StopRule, warmup_stable_decay


@pytest.mark.parametrize("base", [1e-3, 3e-3])
def test_warmup_is_linear_then_flat_then_a_half_cosine_to_the_floor(base):
    lr = lambda step: warmup_stable_decay(step, 10, 100, 50, base)  # noqa: E731
    assert [lr(s) for s in range(10)] == pytest.approx([base * (s + 1) / 10 for s in range(10)])
    assert lr(10) == lr(99) == base  # flat until the decay starts
    assert lr(125) == pytest.approx(base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2))))  # halfway
    assert lr(150) == lr(1000) == pytest.approx(0.01 * base)  # held at the floor after
    assert warmup_stable_decay(500, 10, None, 0, base) == base  # no decay decided yet


def run_rule(rule: StopRule, improving_until: int, epochs: int) -> tuple[int, list[float]]:
    """Epochs run under ``rule`` when validation improves until epoch ``improving_until``; with the lr per step."""
    step, best, lrs = 0, 0, []
    for epoch in range(1, epochs + 1):
        for _ in range(rule.steps_per_epoch):
            lrs.append(warmup_stable_decay(step, 10, rule.decay_start, rule.decay_steps, 1.0))
            step += 1
        best = epoch if epoch <= improving_until else best
        rule.after_epoch(step, epoch - best)
        if rule.finished(step):
            return epoch, lrs
    return epochs, lrs


def test_training_stops_a_decay_after_the_patience_runs_out():
    rule = StopRule(ceiling_steps=100 * 10, steps_per_epoch=10, patience=5)
    epochs, lrs = run_rule(rule, improving_until=20, epochs=100)
    assert rule.decay_start == 25 * 10  # five epochs without improvement after epoch 20
    assert rule.decay_steps == 70  # DECAY_SHARE of the run, in whole epochs
    assert epochs == 32 and abs(rule.decay_steps / (rule.decay_start + rule.decay_steps) - DECAY_SHARE) < 0.03
    assert lrs[100] == 1.0 and lrs[249] == 1.0 and lrs[-1] < 0.05  # stable, then decayed to the floor


def test_training_never_passes_the_ceiling_and_decays_before_it():
    rule = StopRule(ceiling_steps=40 * 10, steps_per_epoch=10, patience=5)
    epochs, lrs = run_rule(rule, improving_until=1000, epochs=40)  # validation never stops improving
    assert epochs == 40 and len(lrs) == 400 and rule.finished(400)
    assert rule.decay_start == 320 and lrs[-1] < 0.05  # the last fifth decays


def test_no_decay_before_the_minimum_steps():
    rule = StopRule(ceiling_steps=100 * 10, steps_per_epoch=10, patience=3, min_steps=300)
    run_rule(rule, improving_until=2, epochs=100)
    assert rule.decay_start == 300


def test_stop_rule_round_trips_through_its_state():
    rule = StopRule(ceiling_steps=1000, steps_per_epoch=10, patience=4)
    rule.after_epoch(200, 4)
    assert StopRule(**rule.state()) == rule and rule.decay_start == 200
