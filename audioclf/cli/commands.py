"""The handlers of ``audioclf train``, ``cv``, ``pack``, ``evaluate``, ``adapt``, ``export``, ``serve`` and
``models``: each passes its settings dataclass's fields on to the function that does the work."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from ..malloc import keep_activations_in_heap
from ..settings import option
from .flags import settings_of


@dataclass
class ExportConfig:
    format: str = option("onnx", "export format", choices=("onnx",))
    out: str | None = option(None, "output file (default RUN/model.onnx)")
    opset: int = option(17, "ONNX opset version", min=13, max=23)


@dataclass
class ModelsConfig:
    sample_rate: int = option(16000, "sample rate the GFLOPs are computed at", min=1000, max=384000)


def cmd_train(args) -> int:
    from ..training import train
    from ..training.config import TrainConfig
    if args.nproc > 1 and "RANK" not in os.environ:
        from ..training.distributed import uses_gpus
        uses_gpus(args.device, args.nproc)  # fewer GPUs than processes: say so before starting them
        return relaunch(args.nproc, args.argv)
    keep_activations_in_heap()  # training steps reuse heap blocks (audioclf.malloc)
    train(args.data, args.out, **settings_of(args, TrainConfig))
    return 0


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def relaunch(nproc: int, argv: list[str] | None) -> int:
    """``audioclf train --nproc N ...`` = ``python -m torch.distributed.run --standalone --nproc_per_node N -m audioclf
    train ...`` (the same arguments minus ``--nproc``); returns its exit status."""
    import subprocess
    argv = without_nproc(sys.argv[1:] if argv is None else argv)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "audioclf", *argv]
    return subprocess.call(cmd)


def cmd_cv(args) -> int:
    from ..training.config import CV_SKIPS, TrainConfig
    from ..training.crossval import CVConfig, cross_validate
    keep_activations_in_heap()  # as cmd_train
    cross_validate(args.data, args.out, **settings_of(args, CVConfig), **settings_of(args, TrainConfig, CV_SKIPS))
    return 0


def cmd_pack(args) -> int:
    from ..data.shards import PackConfig, pack
    info = pack(args.data, args.out, **settings_of(args, PackConfig))
    print(f"packed {info['samples']} clips at {info['sample_rate']} Hz into {len(info['shards'])} shard(s) in {args.out}"
          + (f"; {info['skipped']} file(s) skipped" if info["skipped"] else ""))
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluation.evaluate import EvaluateConfig, evaluate
    evaluate(args.run, args.data, **settings_of(args, EvaluateConfig))
    return 0


def cmd_adapt(args) -> int:
    from ..adaptation import AdaptConfig, adapt_run
    from .predict import audio_paths
    record = adapt_run(args.run, audio_paths(args.paths), args.out, **settings_of(args, AdaptConfig))
    print(f"adapted {record['batchnorm_layers']} batch-norm layer(s) of {args.run} to {record['windows']} window(s) "
          f"from {record['files']} file(s)" + (f" ({record['skipped_files']} skipped)" if record["skipped_files"] else "")
          + f"; run folder: {args.out}")
    return 0


def cmd_export(args) -> int:
    from ..export import export_onnx
    out = export_onnx(args.run, args.out, opset=args.opset)
    meta = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    diff = meta.get("verified_max_abs_diff")
    print(f"wrote {out} (+ {out.name}.json; {meta.get('exporter')} exporter, opset {meta.get('opset')}"
          + (f", max abs logit difference vs PyTorch {diff:.2e}" if diff is not None else "") + ")")
    return 0


def cmd_models(args) -> int:
    from ..models.summary import model_table
    from ..weights import catalogue_table
    print(model_table(sample_rate=args.sample_rate))
    print("\npretrained weights (--pretrained NAME; predict/serve/export/embed NAME):")
    print(catalogue_table())
    return 0


def cmd_serve(args) -> int:
    from ..serving.config import ServeConfig
    try:
        import uvicorn

        from ..serving import create_app
    except ImportError as e:
        raise RuntimeError(f"serving needs the 'serve' extra (pip install 'audioclf[serve]'): {e}") from None
    keep_activations_in_heap()  # batched forward passes reuse heap blocks instead of page-faulting fresh ones
    app = create_app(args.run, **settings_of(args, ServeConfig))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
