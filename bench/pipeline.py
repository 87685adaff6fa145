"""Pipeline benchmark: every figure measured side by side in this one run, printed as ratios.

    python bench/pipeline.py [--files 300] [--steps 20]

1. decode + resample (soundfile + soxr) vs ``librosa.load``            files/s
2. log-mel (our torch front end, batched) vs ``librosa.feature.melspectrogram``  clips/s
3. training clips/s: our pipeline (decoded-audio cache, front end inside the model, batched on the
   device, bf16 autocast where the CPU computes bf16 natively, as ``audioclf train`` does) vs the naive recipe
   (a Dataset that decodes, resamples and computes the spectrogram per item; float32)
4. the default model's training GFLOP/s as a fraction of a matmul's GFLOP/s in the same precision (the
   practical limit)
5. training with 2 DDP processes vs 1 on the CPU (gloo), and tar-shard streaming vs the in-memory cache
   (``bench/scale.py``; skip with ``--no-scale``)

All rows run under the allocator settings ``audioclf train`` applies (:mod:`audioclf.malloc`).
"""
from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
FSDD = sorted(glob.glob(str(ROOT / "datasets/fsdd/recordings/*.flac")))
TARGET_SR = 16000  # resample 8 kHz -> 16 kHz so the resampler is exercised


def timed(fn, repeats: int = 3) -> tuple[float, float]:
    """Median and spread (max - min) of ``repeats`` wall-clock runs after one warm-up run, seconds."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times) - min(times)


def row(name: str, ours: float, theirs: float, unit: str, spread: tuple[float, float]) -> str:
    return (f"{name:<44}{ours:>12.1f}{theirs:>12.1f}  {unit:<10}{ours / theirs:>7.2f}x"
            f"   (spread {spread[0]:.0%}/{spread[1]:.0%})")


def bench_decode(files: list[str]) -> str:
    import librosa
    from audioclf.audio import read_audio
    ours, s1 = timed(lambda: [read_audio(f, TARGET_SR) for f in files])
    theirs, s2 = timed(lambda: [librosa.load(f, sr=TARGET_SR, res_type="soxr_hq") for f in files])
    return row("decode + resample to 16 kHz", len(files) / ours, len(files) / theirs, "files/s", (s1 / ours, s2 / theirs))


def bench_logmel(clips: np.ndarray) -> str:
    import librosa
    from audioclf.features import FrontendConfig, LogMel
    cfg = FrontendConfig(sample_rate=TARGET_SR)
    logmel = LogMel(cfg)
    batch = torch.from_numpy(clips)
    with torch.no_grad():
        ours, s1 = timed(lambda: logmel(batch))

    def librosa_all():
        for clip in clips:
            np.log(librosa.feature.melspectrogram(y=clip, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                                  win_length=cfg.win_length, n_mels=cfg.n_mels, power=2.0) + 1e-6)
    theirs, s2 = timed(librosa_all)
    return row(f"log-mel, {clips.shape[1] / TARGET_SR:.1f} s clips", len(clips) / ours, len(clips) / theirs, "clips/s",
               (s1 / ours, s2 / theirs))


class NaiveDataset(Dataset):
    """The starting recipe: decode, resample and compute the spectrogram for every item, every epoch."""

    def __init__(self, files, clip_samples, cfg):
        self.files, self.clip_samples, self.cfg = files, clip_samples, cfg

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import librosa
        y, _ = librosa.load(self.files[i], sr=self.cfg.sample_rate)
        y = np.pad(y, (0, max(0, self.clip_samples - len(y))))[: self.clip_samples]
        c = self.cfg
        mel = librosa.feature.melspectrogram(y=y, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
                                             win_length=c.win_length, n_mels=c.n_mels, power=2.0)
        return torch.from_numpy(np.log(mel + 1e-6)).float(), int(Path(self.files[i]).name[0])


def bench_training(files: list[str], steps: int, batch_size: int = 64) -> tuple[str, str]:
    from audioclf.data.cache import AudioCache
    from audioclf.data.clips import ClipDataset
    from audioclf.features import FrontendConfig
    from audioclf.models import create_model
    from audioclf.training.autoconfig import choose_model
    from audioclf.training.settings import resolve_amp
    name, args = choose_model(len(files))
    amp = resolve_amp(None, torch.device("cpu"))  # as `audioclf train` decides: bf16 autocast where native
    precision = "bf16" if amp else "fp32"
    batch_size = min(batch_size, len(files) // 2)  # at least two batches per pass over the files
    cfg = FrontendConfig(sample_rate=TARGET_SR)
    clip_samples = TARGET_SR  # 1 s windows
    labels = np.eye(10, dtype=np.float32)[[int(Path(f).name[0]) for f in files]]

    def make_model(channels_last: bool = True):
        """As ``audioclf train`` builds it (channels-last); the naive recipe keeps the default layout."""
        torch.manual_seed(0)
        model = create_model(name, 10, cfg, **args).train()
        return model.to(memory_format=torch.channels_last) if channels_last else model

    def train_step(model, opt, x, y, bf16: bool) -> None:
        """One optimiser step, the network under bf16 autocast when ``bf16`` (as ``audioclf train`` runs it)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def run_steps(model, batches, warmup: int = 2, bf16: bool = False):
        """Training clips/s over ``steps`` steps, loading included, after ``warmup`` untimed steps."""
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        n, t = 0, time.perf_counter()
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                n, t = 0, time.perf_counter()
            if i == warmup + steps:
                break
            train_step(model, opt, x, y, bf16)
            n += len(x)
        return n / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as cache_dir:
        clips, _ = AudioCache(cache_dir, TARGET_SR).load(files)
        ours_ds = ClipDataset([clips[f] for f in files], labels, clip_samples, train=True)
        loader = DataLoader(ours_ds, batch_size=batch_size, shuffle=True, drop_last=True)
        cycle = lambda dl: (b for _ in range(100) for b in dl)  # noqa: E731
        model = make_model()
        ours = run_steps(model, cycle(loader), bf16=amp)

    naive_model = make_model(channels_last=False)
    backbone = naive_model.body  # the same network, fed the precomputed spectrograms

    class SpecModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.body, self.m = naive_model.frontend.norm, backbone, naive_model

        def forward(self, spec):
            return self.m.forward_head(self.body(self.norm(spec).unsqueeze(1)))

    naive_loader = DataLoader(NaiveDataset(files, clip_samples, cfg), batch_size=batch_size, shuffle=True, drop_last=True)
    naive = run_steps(SpecModel().train(), cycle(naive_loader))
    train_row = f"{'training, default model (' + name + ', ' + precision + ')':<44}{ours:>12.1f}{naive:>12.1f}  {'clips/s':<10}{ours / naive:>7.2f}x"

    # training GFLOP/s of the default model vs a matmul's GFLOP/s in the same precision, both measured here
    model = make_model()
    x = torch.from_numpy(np.stack([ours_ds[i][0].numpy() for i in range(batch_size)]))
    y = torch.from_numpy(labels[:batch_size].argmax(1))
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    flops_per_step = counter.get_total_flops()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    t_step, _ = timed(lambda: train_step(model, opt, x, y, amp), 5)  # timed() runs one untimed warm-up step
    dtype = torch.bfloat16 if amp else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    torch.mm(a, b)
    t_mm, _ = timed(lambda: torch.mm(a, b), 5)
    model_gflops, mm_gflops = flops_per_step / t_step / 1e9, 2 * 2048 ** 3 / t_mm / 1e9
    flop_row = (f"{'training GFLOP/s (' + name + ') vs ' + precision + ' matmul':<44}{model_gflops:>12.1f}{mm_gflops:>12.1f}  "
                f"{'GFLOP/s':<10}{model_gflops / mm_gflops:>7.3f}x")
    return train_row, flop_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--no-scale", action="store_true", help="skip the DDP and shard rows")
    args = parser.parse_args()
    from audioclf.malloc import keep_activations_in_heap
    keep_activations_in_heap()  # as `audioclf train` does; process-wide, so the references run under it too
    rng = np.random.default_rng(0)
    files = [FSDD[i] for i in rng.choice(len(FSDD), args.files, replace=False)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(files)} FSDD files (8 kHz -> {TARGET_SR} Hz)")
    print(f"{'':<44}{'audioclf':>12}{'reference':>12}  {'unit':<10}{'ratio':>8}")
    print(bench_decode(files))
    from audioclf.audio import read_audio
    from audioclf.data.clips import fit_length
    clips = np.stack([fit_length(read_audio(f, TARGET_SR)[0], TARGET_SR) for f in files])
    print(bench_logmel(clips))
    for line in bench_training(files, args.steps):
        print(line)
    if not args.no_scale:
        import scale  # bench/scale.py
        r = scale.measure()
        for name, ours, ref in (("training, 2 DDP processes vs 1 (gloo)", r["train_2proc"], r["train_1proc"]),
                                ("reading training data, tar shards vs cache", r["read_shards"], r["read_cache"]),
                                ("training from tar shards vs cache", r["train_shards"], r["train_1proc"])):
            print(f"{name:<44}{ours:>12.1f}{ref:>12.1f}  {'clips/s':<10}{ours / ref:>7.2f}x")


if __name__ == "__main__":
    main()
