"""The automatic settings ``audioclf train DATA`` picks from the data (audioclf/training/autoconfig.py)."""
from audioclf.training.autoconfig import MAX_EPOCHS, choose_clip_seconds, choose_epochs, DataSummary


def steps(train_files: int, batch_size: int, model: str = "cnn") -> int:
    """The optimiser steps ``choose_epochs`` plans for, a last partial batch counted."""
    return choose_epochs(train_files, batch_size, model) * -(-train_files // batch_size)


def test_a_small_data_set_gets_the_steps_of_a_large_one():
    # a few hundred files: about 1,000 optimiser steps however many epochs that takes (a cap of 50 epochs gave
    # 243 FSDD clips 350 steps and a test accuracy 6-9 points lower: bench/small_data.py)
    for files in (121, 243, 288, 640):
        assert 900 <= steps(files, 32) <= 1100, files
    assert choose_epochs(243, 32) == 125


def test_large_data_sets_train_at_least_ten_epochs_and_tiny_ones_at_most_the_cap():
    assert choose_epochs(2430, 64) == 26  # FSDD's official split, as `make demo` trains it
    assert choose_epochs(85_000, 64) == 10  # Speech Commands: ten epochs, over 13,000 steps
    assert choose_epochs(10, 32) == MAX_EPOCHS


def test_the_recurrent_model_gets_more_steps_than_the_others():
    # crnn was still improving at the end of 1,000 steps; 1,800 gave it 2.8 points on held-out voices
    assert choose_epochs(2250, 64, "crnn") == 50  # FSDD leave one speaker out: 36 steps an epoch
    assert choose_epochs(2250, 64, "cnn") == choose_epochs(2250, 64) == 28
    for files in (243, 640, 2250):
        assert 1700 <= steps(files, 32, "crnn") <= 1900, files
        assert 900 <= steps(files, 32, "mobilenet") <= 1100, files
    assert choose_epochs(85_000, 64, "crnn") == 10 and choose_epochs(10, 32, "crnn") == MAX_EPOCHS


def test_clip_length_is_the_90th_percentile_within_limits():
    summary = lambda p90: DataSummary(100, 2, 16000, p90, p90, 1.0)  # noqa: E731
    assert choose_clip_seconds(summary(0.62)) == 0.75
    assert choose_clip_seconds(summary(0.1)) == 0.5
    assert choose_clip_seconds(summary(30.0)) == 10.0


def test_fine_tuning_aims_at_fewer_steps():
    from audioclf.training.autoconfig import FINETUNE_STEPS, choose_finetune_epochs
    assert choose_finetune_epochs(320, 32) == FINETUNE_STEPS // 10  # 10 steps an epoch
    assert choose_finetune_epochs(2430, 64) == 10  # FSDD's official split: 38 steps an epoch, at least 10 epochs
    assert choose_finetune_epochs(85_000, 64) == 10 and choose_finetune_epochs(10, 32) == FINETUNE_STEPS  # 1 step each
    assert choose_finetune_epochs(2430, 64) < choose_epochs(2430, 64)
