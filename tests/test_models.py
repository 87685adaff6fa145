"""Tests for audioclf.models: every registered model trains, the head interface, augmentations only in training
mode, the front end, batch-norm folding, compilation and the model table (augmentations themselves:
test_augment.py)."""
from __future__ import annotations

import math
import re

import pytest
import torch

from audioclf.augment import AugmentConfig, SpecAugment, WaveformAugment, run_augmentations_eagerly
from audioclf.features import FrontendConfig
from audioclf.models import AudioClassifier, create_model, list_models, register_model
from audioclf.models.base import Frontend
from audioclf.models.fusion import fold_batchnorm
from audioclf.models.summary import forward_gflops, model_table

SR = 8000
SAMPLES = SR // 2  # 0.5 s
FRONTEND = FrontendConfig(sample_rate=SR, n_mels=32)
EXPECTED_MODELS = {"ast_tiny", "cnn", "cnn6", "cnn10", "cnn14", "crnn", "mobilenet", "resnet", "mn01", "mn02", "mn04", "mn05",
                   "mn10", "mn20", "mn30", "mn40"}



def small_kwargs(name: str) -> dict:
    """Small but structurally complete versions of each model."""
    if name == "ast_tiny":
        return {"dim": 64, "depth": 2, "heads": 2}
    if name in ("cnn6", "cnn10", "cnn14"):
        return {"width": 0.25}
    if name.startswith("mn"):  # EfficientAT widths are fixed by the name
        return {}
    return {"width": 0.5}


def build(name: str, classes: int = 5, augment: AugmentConfig | None = None, **extra):
    torch.manual_seed(0)
    return create_model(name, classes, FRONTEND, augment or AugmentConfig(), **{**small_kwargs(name), **extra})


def waves(batch: int = 2, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    freqs = torch.tensor([300.0, 1200.0, 700.0, 2000.0])[:batch, None]
    return 0.3 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(batch, samples, generator=g)


def test_registry_lists_every_model():
    assert set(list_models()) >= EXPECTED_MODELS
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    model = build(name)
    model.train()
    x = waves()
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3]))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    assert model.get_classifier().weight.grad.abs().sum() > 0
    # one optimiser step changes the output
    model.eval()
    before = model(x).detach()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.allclose(model(x), before)


@pytest.mark.parametrize("name", list_models())
def test_head_interface(name):
    model = build(name).eval()
    assert isinstance(model, AudioClassifier)
    assert model.model_name == name and model.model_args == small_kwargs(name)
    x = waves()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), logits)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        torch.testing.assert_close(model.get_classifier()(pooled), logits)
        head = model.head_name + "."
        backbone = {n: p.clone() for n, p in model.named_parameters() if not n.startswith(head)}
        model.reset_classifier(7)
        assert model.num_classes == 7
        assert model(x).shape == (2, 7)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pooled)
    for n, p in model.named_parameters():
        if not n.startswith(head):
            assert torch.equal(p, backbone[n])
    names = [n for n, _ in model.named_parameters()]
    backbone_count = len([n for n in names if not n.startswith(head)])
    assert backbone_count > 0 and len(list(model.backbone_parameters())) == backbone_count


@pytest.mark.parametrize("name", list_models())
def test_eval_is_deterministic_and_batch_independent(name):
    model = build(name).eval()
    x = waves(batch=3)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(single[0], a[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_folding_batch_norms_into_convs_keeps_the_logits(name):
    """``fold_batchnorm`` (what ``audioclf.load`` does for inference) removes every conv-then-batch-norm pair's norm
    and leaves the eval-mode logits as they were; with statistics far from the identity, so a wrong fold shows."""
    model = build(name)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 4 + 0.1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model.train())
    model.eval()
    x = waves(batch=3)
    pairs = sum(isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d)
                for seq in model.modules() if isinstance(seq, torch.nn.Sequential) for a, b in zip(seq, seq[1:]))
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == pairs
        after = model(x)
    if name.startswith("cnn") or name == "crnn":
        assert pairs > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.body.modules())
    torch.testing.assert_close(after, before, atol=1e-4 * before.abs().max().item(), rtol=1e-4)


def test_unknown_model_lists_registered_models():
    with pytest.raises(ValueError) as info:
        create_model("no_such_model", 3)
    message = str(info.value)
    assert "no_such_model" in message
    for name in list_models():
        assert name in message


@pytest.mark.parametrize("bad", [0, -1, 2.0, "3"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn", bad)


def test_registering_a_name_twice_is_an_error():
    before = list_models()

    def cnn(num_classes, frontend, augment):  # noqa: ARG001
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="twice"):
        register_model(cnn)
    assert list_models() == before
    assert create_model("cnn", 2, FRONTEND, width=0.25).num_classes == 2


def test_create_model_from_plain_dicts():
    """config.json stores the configs as dicts (tuples become lists)."""
    aug = AugmentConfig(snr_db=(3.0, 9.0))
    model = create_model("cnn", 4, FRONTEND.to_dict(), {**aug.to_dict(), "snr_db": [3.0, 9.0]}, width=0.25)
    assert model.frontend.config == FRONTEND
    assert model.frontend.augment_config == aug


def test_transformer_pads_clips_shorter_than_a_patch():
    model = build("ast_tiny").eval()
    with torch.no_grad():
        out = model(waves(samples=800))  # 11 frames < 16-frame patch
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_transformer_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="pooling"):
        build("ast_tiny", pooling="max")
    model = build("ast_tiny", pooling="mean").eval()
    assert model.cls_token is None and model(waves()).shape == (2, 5)


# ------------------------------------------------------------------------------------ augmentation on/off


@pytest.mark.parametrize("name", ["cnn", "mobilenet", "ast_tiny"])
def test_augmentation_only_in_training_mode(name):
    x = waves(batch=4)
    on = build(name, augment=AugmentConfig(noise_prob=1.0), dropout=0.0)
    off = build(name, augment=AugmentConfig.off(), dropout=0.0)
    with torch.no_grad():
        on.eval()
        assert torch.equal(on(x), on(x))
        # train mode, no augmentation and no dropout: batch-norm batch statistics are deterministic
        off.train()
        torch.testing.assert_close(off(x), off(x))
        on.train()
        assert not torch.allclose(on(x), on(x))


@pytest.mark.parametrize("name", ["cnn", "mobilenet"])
def test_level_norm_makes_predictions_gain_invariant(name):
    torch.manual_seed(0)
    x = waves(batch=3) + 0.3 * torch.randn(3, SAMPLES)  # tones in noise, whose quietest mel bins are ~7e-3
    gains = (1.0, 10.0, 100.0)  # 0, +20, +40 dB: the 1e-6 floor of the log-mel stays out of the way
    model = create_model(name, 4, FRONTEND, AugmentConfig.off(), **small_kwargs(name)).eval()
    plain = Frontend(FrontendConfig(sample_rate=SR, n_mels=32, level_norm=False), AugmentConfig.off()).eval()
    with torch.no_grad():
        inputs = [model.frontend(x * g) for g in gains]
        logits = [model(x * g) for g in gains]
        unnormalised = [plain(x * g) for g in gains]
    for i in (1, 2):
        assert torch.allclose(inputs[i], inputs[0], atol=1e-3)
        assert torch.allclose(logits[i], logits[0], atol=1e-3)
        assert (unnormalised[i] - unnormalised[0]).abs().mean() > 1.0  # without it, the gain shows


def test_frontend_augmentations_only_in_training_mode():
    x = waves(batch=4)
    front = Frontend(FRONTEND, AugmentConfig(noise_prob=1.0))
    plain = Frontend(FRONTEND, AugmentConfig.off())
    with torch.no_grad():
        front.eval(), plain.eval()
        # in eval mode the augmented front end is exactly the plain one (same BN init statistics)
        torch.testing.assert_close(front(x), plain(x))
        front.train(), plain.train()
        torch.testing.assert_close(plain(x), plain(x))
        a, b = front(x), front(x)
        assert a.shape == b.shape == (4, 1, 32, FRONTEND.frames(SAMPLES))
        assert not torch.allclose(a, b)
    assert hasattr(front, "jittered_fb") and not hasattr(plain, "jittered_fb")
    assert front.jittered_fb.shape == (17, 32, FRONTEND.n_fft // 2 + 1)


def test_frontend_stays_float32_under_bf16_autocast():
    # bf16 autocast (the training default where the CPU or GPU computes bf16) covers the network, not the features:
    # a model trains on the same float32 log-mel it is evaluated, served and exported with
    x = waves(batch=3)
    model = build("cnn", augment=AugmentConfig.off()).eval()
    with torch.no_grad():
        plain = model.frontend(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_amp = model.frontend(x)
            logits = model(x)
    assert under_amp.dtype == torch.float32 and torch.equal(under_amp, plain)
    assert logits.dtype == torch.bfloat16  # the network itself does run in bf16


def test_waveform_and_spec_augment_are_identity_in_eval():
    x = waves(batch=3)
    wa = WaveformAugment(AugmentConfig(noise_prob=1.0), SR).eval()
    sa = SpecAugment(AugmentConfig()).eval()
    assert torch.equal(wa(x), x)
    spec = torch.randn(3, 32, 51)
    assert torch.equal(sa(spec), spec)
    wa.train()
    assert not torch.equal(wa(x), x)


# ------------------------------------------------------------------------------------ model table


@pytest.mark.slow
def test_model_table_lists_every_model_with_positive_cost():
    table = model_table(sample_rate=SR, num_classes=10)
    rows = {}
    for line in table.splitlines()[2:]:
        m = re.match(r"^(\S+)\s+([0-9.]+)\s+([0-9.]+)\s+(.+)$", line)
        assert m, line
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), m.group(4))
    assert set(rows) == set(list_models())
    for name, (params, gflops, doc) in rows.items():
        assert params > 0 and gflops > 0, name
        assert doc
    # widths and depths order the costs as documented
    assert rows["cnn14"][0] > rows["cnn10"][0] > rows["cnn"][0]
    assert rows["mobilenet"][1] < rows["cnn"][1]


def test_forward_gflops_scales_with_audio_length():
    model = build("cnn")
    one = forward_gflops(model, SR, 1.0)
    two = forward_gflops(model, SR, 2.0)
    assert one > 0
    assert 1.7 < two / one < 2.3


def test_inference_batch_size_keeps_cpu_batches_in_cache():
    from audioclf.inference import CPU_BATCH_CELLS, inference_batch_size
    model = build("cnn")  # 32 mels
    frames = FRONTEND.frames(SAMPLES)
    size = inference_batch_size(model, SAMPLES, "cpu")
    assert size == min(64, CPU_BATCH_CELLS // (32 * frames))
    assert size * 32 * frames <= CPU_BATCH_CELLS < (size + 1) * 32 * frames or size == 64
    assert inference_batch_size(model, SR * 600, "cpu") == 1  # ten-minute windows: one at a time
    bf16 = inference_batch_size(model, SAMPLES, "cpu", amp=True)  # activations of half the bytes: twice the cells
    assert bf16 == min(64, 2 * CPU_BATCH_CELLS // (32 * frames)) and (bf16 > size or size == 64)
    assert inference_batch_size(model, SAMPLES, "cuda") == 64  # accelerators are not capped
    assert inference_batch_size(torch.nn.Linear(2, 2), SAMPLES, "cpu") == 64  # no front end to size it by


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "crnn"])  # time_pool (every CNN, resnet, mobilenet) and the GRU's pool
def test_pooling_compiles_to_finite_float32_gradients_and_stays_bf16_when_eager(name):
    """``torch.compile`` (PyTorch 2.13, CPU) turned every gradient of a bf16 ``mean(...).amax(...)`` into NaN, so
    ``--compile`` under bf16 autocast trained a model of NaNs: compiled, the pools run in float32 and give the eager
    float32 pool's gradients. Eager, they pool in bf16 under autocast, which generalised better than float32
    (``pooling_precision``)."""
    torch.manual_seed(0)
    model = create_model(name, 10, FRONTEND, AugmentConfig.off(), width=0.25).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.forward_features(torch.randn(4, SAMPLES))
    assert features.dtype == torch.bfloat16  # what the network hands its pool under autocast
    grads = []
    for pool, dtype in ((torch.compile(model.pool), torch.bfloat16), (model.pool, torch.float32)):
        x = features.detach().to(dtype).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pooled = pool(x)
        pooled.square().sum().backward()
        assert pooled.dtype == torch.float32
        grads.append(x.grad.float())
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], atol=1e-2, rtol=1e-2)  # the compiled grads are rounded to bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.pool(features).dtype == torch.bfloat16


def test_compiled_training_keeps_the_augmentations_out_of_the_graphs():
    """``--compile``: the augmentations' per-batch random choices (``.item()`` counts and branches, the jittered
    filter bank's index) would break the graph at each and recompile it for each new value; after
    :func:`run_augmentations_eagerly` the only breaks are the calls into the eager augmentation modules, which
    still augment."""
    torch.manual_seed(0)
    model = create_model("cnn", 10, FrontendConfig(sample_rate=8000)).train()
    x = torch.randn(4, 6000)
    run_augmentations_eagerly(model)
    explanation = torch._dynamo.explain(model)(x)
    reasons = [str(b.reason) for b in explanation.break_reasons]
    assert reasons and all("disable()" in r for r in reasons), reasons
    spec = torch.randn(4, 64, 76)
    assert not torch.equal(model.frontend.spec_augment(spec), spec)  # still augmenting in training mode
    model.eval()
    assert torch.equal(model.frontend.spec_augment(spec), spec)
