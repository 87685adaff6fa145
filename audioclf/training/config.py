"""Every training setting in one dataclass; the CLI turns its fields into flags."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..settings import PATTERN_HELP, check_value

SCRATCH = "off"  # --pretrained off: from scratch
CV_SKIPS = ("test_fold", "test_fraction", "nproc")  # TrainConfig fields cv sets itself (folds; one process a fold)


@dataclass
class TrainConfig:
    """Training settings. ``None`` means: chosen from the data (printed and stored in config.json)."""

    model: str | None = field(default=None, metadata={"help": "registered model name (default: chosen from the data); "
                                                               "several, comma-separated (cnn,crnn), train an "
                                                               "ensemble whose members take them in turn"})
    width: float | None = field(default=None, metadata={"gt": 0, "help": "model width multiplier"})
    epochs: int | None = field(default=None, metadata={"min": 1, "help": "training epochs"})
    batch_size: int | None = field(default=None, metadata={"min": 1, "help": "examples per optimiser step"})
    lr: float | None = field(default=None, metadata={"gt": 0, "help": "peak learning rate of the head (AdamW; default 3e-3, "
                                                               "1e-3 when fine-tuning --pretrained weights)"})
    backbone_lr_scale: float = field(default=1.0, metadata={"min": 0, "help": "with --pretrained: the backbone's learning rate "
                                                                     "as a fraction of the head's --lr (default 1: one "
                                                                     "rate, as EfficientAT fine-tunes; below 1 keeps "
                                                                     "more of the pretrained features)"})
    weight_decay: float = field(default=0.05, metadata={"min": 0, "help": "AdamW weight decay (not on norms and biases)"})
    warmup_epochs: float = field(default=1.0, metadata={"min": 0, "help": "linear warm-up length in epochs"})
    label_smoothing: float = field(default=0.1, metadata={"min": 0, "lt": 1, "help": "label smoothing (single-label)"})
    ema_decay: float = field(default=0.995, metadata={"min": 0, "lt": 1, "help": "most the weight-EMA decay reaches: it warms up as "
                                                                  "(1+step)/(10+step), which passes 0.995 after "
                                                                  "1,790 steps; 0 disables the EMA"})
    grad_clip: float = field(default=5.0, metadata={"min": 0, "help": "gradient norm clip; 0 disables"})
    patience: int | None = field(default=None, metadata={"min": 1, "help": "epochs without validation improvement before the "
                                                                 "learning rate decays and training ends (default: "
                                                                 "a fifth of the typical steps, 3 epochs or more)"})
    sample_rate: int | None = field(default=None, metadata={"min": 1000, "max": 384000, "help": "audio sample rate in Hz"})
    clip_seconds: float | None = field(default=None, metadata={"min": 0.01, "max": 3600, "help": "training window length in seconds"})
    n_mels: int = field(default=64, metadata={"min": 1, "max": 512, "help": "mel bands (a --pretrained model keeps its own front end)"})
    level_norm: bool | None = field(default=None, metadata={"help": "normalise each window's level (loudest frame "
                                                                    "at 0 dB): predictions that do not depend on "
                                                                    "gain (default: on, unless level tells the "
                                                                    "labels apart)"})
    pattern: str | None = field(default=None, metadata={"help": PATTERN_HELP})
    test_fold: str | None = field(default=None, metadata={"help": "declared fold used as the test set (default: a fold named "
                                                                "test/testing/eval, else a stratified hold-out)"})
    test_fraction: float = field(default=0.2, metadata={"min": 0, "lt": 1, "help": "stratified hold-out test fraction when no --test-fold"})
    val_fraction: float | None = field(default=None, metadata={"min": 0, "lt": 1, "help": "validation fraction carved from "
                                                               "train (default: 100 clips and 10 a class or more, "
                                                               "within 0.1-0.25)"})
    balance: str = field(default="auto", metadata={"choices": ("auto", "on", "off"), "help": "class-balanced loss weights: auto|on|off"})
    mixup: float = field(default=0.3, metadata={"min": 0, "help": "mixup Beta alpha; 0 disables"})
    specaugment: bool = field(default=True, metadata={"help": "SpecAugment masks"})
    augment: bool = field(default=True, metadata={"help": "all waveform/spectrogram augmentation"})
    aug: str | None = field(default=None, metadata={"help": "augmentation overrides KEY=VALUE[,KEY=VALUE] "
                                                         "(AugmentConfig fields, e.g. gain_db=6,mixstyle_prob=0)"})
    group_batches: bool = field(default=False, metadata={"help": "draw each training batch from one group (speaker, "
                                                                 "device, site), so the batch norms learn per-group "
                                                                 "statistics; pairs with `audioclf adapt`"})
    noise_dir: str | None = field(default=None, metadata={"help": "folder of background-noise audio for augmentation"})
    pretrained: str | None = field(default=None, metadata={"help": "start from pretrained weights and fine-tune: a "
                                                                   "catalogue name (mn04_as; `audioclf models` lists "
                                                                   "them), a release file or a run folder, with a new "
                                                                   "head for the data's labels; off: from scratch "
                                                                   "(default: both from scratch and from mn04_as, "
                                                                   "the better on validation kept, unless the "
                                                                   "model's flags fix the model)"})
    freeze_backbone: bool = field(default=False, metadata={"help": "with --pretrained: train the head alone (a linear "
                                                               "probe on the pretrained embeddings)"})
    seed: int = field(default=0, metadata={"help": "random seed (CPU runs are reproducible)"})
    split_seed: int | None = field(default=None, metadata={"help": "seed of the test and validation hold-outs "
                                                                   "(default: --seed), so runs can differ in their "
                                                                   "training randomness alone"})
    ensemble: int = field(default=1, metadata={"min": 1, "max": 64, "help": "train this many models (seeds seed + 1000 k, one split; "
                                                       "with several --model names, those in turn) and keep their "
                                                       "mean logits as the run's model, for that many times the "
                                                       "training and inference time (default: 1, or one per --model "
                                                       "name)"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda|cuda:N"})
    amp: bool | None = field(default=None, metadata={"help": "bf16 autocast in training (default: on where the GPU or "
                                                             "CPU computes bf16 natively, e.g. AVX-512 BF16 or AMX; "
                                                             "a resumed run keeps its own)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    workers: int = field(default=0, metadata={"min": 0, "help": "DataLoader worker processes"})
    cache_dir: str | None = field(default=None, metadata={"help": "decoded-audio cache (default ~/.cache/audioclf)"})
    checkpoint_every: int = field(default=100, metadata={"min": 0, "help": "also save the training state (RUN/state) every N steps; 0: epoch ends only"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run already in --out (its files, "
                                                             "exports and evaluations are removed first)"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run from RUN/state"})
    nproc: int = field(default=1, metadata={"min": 1, "help": "data-parallel processes on this machine (re-launches through torch.distributed.run)"})
    shuffle_buffer: int = field(default=1000, metadata={"min": 1, "help": "shuffle buffer size when training from tar shards"})

    def check(self) -> None:
        """Refuse a value outside its field's range or choices (``metadata``: min, max, gt, lt, choices) and an
        unavailable ``--device``, with one line naming the flag."""
        from ..devices import check_device
        for f in fields(self):
            check_value(f, getattr(self, f.name))
        check_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)

    def init_spec(self) -> str | None:
        """The pretrained source to fine-tune from; None for a run from scratch (``--pretrained off``, or not yet
        chosen)."""
        return None if self.pretrained in (None, SCRATCH) else self.pretrained

    def model_names(self) -> list[str]:
        """The ``--model`` names in order (empty when the data chooses)."""
        return [name.strip() for name in self.model.split(",")] if self.model else []

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class TrainError(RuntimeError):
    """The run cannot go on (e.g. no usable files)."""
