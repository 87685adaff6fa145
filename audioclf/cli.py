"""The ``audioclf`` command: train, pack, evaluate, predict, cv, adapt, export, serve, models."""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from .malloc import keep_activations_in_heap

_TYPES = {"str": str, "int": int, "float": float}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--flag`` per dataclass field; booleans get ``--x/--no-x``; help from the field's metadata."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        default = f.default if f.default is not MISSING else None
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata.get("help"))
        else:
            parser.add_argument(flag, type=_TYPES[kind], default=default, help=f.metadata.get("help"),
                                metavar=f.name.upper())


def _audio_paths(paths: list[str]) -> list[Path]:
    from .data.manifest import _audio_files
    out = []
    for p in map(Path, paths):
        out += _audio_files(p) if p.is_dir() else [p]
    return out


def cmd_train(args) -> int:
    from .training.config import TrainConfig
    from .training.trainer import train
    if args.nproc > 1 and "RANK" not in os.environ:
        from .training.distributed import uses_gpus
        uses_gpus(args.device, args.nproc)  # fewer GPUs than processes: say so before starting them
        return _relaunch(args.nproc)
    keep_activations_in_heap()  # training steps reuse heap blocks: make demo about 5% faster (audioclf.malloc)
    settings = {name: getattr(args, name) for name in TrainConfig.field_names()}
    train(args.data, args.out, **settings)
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _relaunch(nproc: int) -> int:
    """``audioclf train --nproc N ...`` = ``python -m torch.distributed.run --standalone --nproc_per_node N -m audioclf
    train ...`` (the same arguments minus ``--nproc``); returns its exit status."""
    import subprocess
    argv = _without_nproc(sys.argv[1:] if _ARGV is None else _ARGV)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "audioclf", *argv]
    return subprocess.call(cmd)


def cmd_pack(args) -> int:
    from .data.shards import pack
    info = pack(args.data, args.out, shard_size=args.shard_size, sample_rate=args.sample_rate, pattern=args.pattern,
                cache_dir=args.cache_dir)
    print(f"packed {info['samples']} clips at {info['sample_rate']} Hz into {len(info['shards'])} shard(s) in {args.out}"
          + (f"; {info['skipped']} file(s) skipped" if info["skipped"] else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation.evaluate import evaluate
    evaluate(args.run, args.data, test_fold=args.test_fold, pattern=args.pattern, out=args.out,
             cache_dir=args.cache_dir, device=args.device, amp=args.amp)
    return 0


def _predictor(args):
    """The classifier for ``predict``: PyTorch from a run folder (or a pretrained catalogue name), or ONNX
    (``--backend onnx`` or a .onnx path)."""
    from .weights import resolve_run
    run = resolve_run(args.run)
    backend = getattr(args, "backend", None) or ("onnx" if run.suffix.lower() == ".onnx" else "torch")
    if backend == "torch":
        if run.suffix.lower() == ".onnx":
            raise ValueError(f"{run} is an ONNX file: use --backend onnx (the PyTorch back end needs a run folder)")
        from .inference import load
        keep_activations_in_heap()  # batched forward passes reuse heap blocks (audioclf.malloc)
        return load(run, args.device, args.amp)
    if args.amp:
        raise ValueError("--amp applies to the torch back end; an ONNX model runs as exported (float32)")
    from .onnx_predictor import OnnxClassifier
    if run.is_dir():
        from .export import ONNX_NAME, export_onnx
        if not (run / ONNX_NAME).is_file():
            print(f"no {ONNX_NAME} in {run}: exporting it first", file=sys.stderr)
            print(f"exported {export_onnx(run)}", file=sys.stderr)
    return OnnxClassifier(run)


def _predict_windows(args, clf, paths) -> int:
    """``predict --window``: per-window scores and merged events for each (long) recording."""
    from .audio import AudioDecodeError
    from .isolated_decoding import DecoderPool
    from .longform import events, scan
    if args.median < 1 or args.median % 2 == 0:
        raise ValueError(f"--median must be a positive odd number of windows, got {args.median}")
    labels = list(clf.labels)
    threshold = args.threshold
    if threshold is None:
        threshold = list(clf.thresholds) if clf.multilabel else 0.5
    results, failures = [], 0
    with DecoderPool(workers=1) as decoders:  # files only FFmpeg reads: a decoder crash costs that file
        for path in paths:
            try:
                times, scores = scan(clf, path, args.window, args.hop, block_s=args.block,
                                     read_blocks=decoders.blocks)
            except AudioDecodeError as e:
                failures += 1
                print(f"error: {e}", file=sys.stderr)
                continue
            found = events(times, scores, labels, threshold=threshold, min_duration=args.min_duration,
                           median_filter=args.median)
            results.append((str(path), times, scores, found))
    if args.format == "json":
        print(json.dumps([{"path": p,
                           "windows": [{"start": round(float(t[0]), 4), "end": round(float(t[1]), 4),
                                        "scores": {lab: round(float(v), 6) for lab, v in zip(labels, row)}}
                                       for t, row in zip(times, scores)],
                           "events": [{**e, "start": round(e["start"], 4), "end": round(e["end"], 4),
                                       "peak": round(e["peak"], 6)} for e in found]}
                          for p, times, scores, found in results], indent=2))
    elif args.format == "csv":
        print(",".join(["path", "start", "end"] + [json.dumps(lab) for lab in labels]))
        for p, times, scores, _ in results:
            for t, row in zip(times, scores):
                print(",".join([json.dumps(p), f"{t[0]:.4f}", f"{t[1]:.4f}"] + [f"{v:.6f}" for v in row]))
    else:
        for p, times, scores, found in results:
            print(f"{p}: {len(times)} windows, {len(found)} events")
            for e in found:
                print(f"  {e['start']:10.2f} - {e['end']:10.2f} s  {e['label']}  (peak {e['peak']:.3f})")
    return 1 if failures and not results else 0


PREDICT_CHUNK_FILES, PREDICT_CHUNK_SECONDS = 32, 600  # predict over many files: clips held per batched call at most


def _decoded_chunks(paths, read, sample_rate: int, failures: list):
    """``[(path, clip)]`` groups of at most ``PREDICT_CHUNK_FILES`` files and about ``PREDICT_CHUNK_SECONDS`` of
    audio, decoded by ``read(path, sample_rate)``; a file that fails is reported, appended to ``failures``, skipped."""
    from .audio import AudioDecodeError
    chunk, samples = [], 0
    for path in paths:
        try:
            clip = read(path, sample_rate)
        except AudioDecodeError as e:
            failures.append(path)
            print(f"error: {e}", file=sys.stderr)
            continue
        chunk.append((path, clip))
        samples += len(clip)
        if len(chunk) == PREDICT_CHUNK_FILES or samples >= PREDICT_CHUNK_SECONDS * sample_rate:
            yield chunk
            chunk, samples = [], 0
    if chunk:
        yield chunk


def cmd_predict(args) -> int:
    from .isolated_decoding import DecoderPool
    clf = _predictor(args)
    if getattr(args, "window", None) is not None:
        return _predict_windows(args, clf, _audio_paths(args.paths))
    rows, failures = [], []
    with DecoderPool(workers=1) as decoders:  # files only FFmpeg reads: a decoder crash costs that file
        for chunk in _decoded_chunks(_audio_paths(args.paths), decoders.read_mono, clf.sample_rate, failures):
            predictions = clf.predict([clip for _, clip in chunk], top_k=args.top_k)  # files share forward passes
            rows += [(str(path), p) for (path, _), p in zip(chunk, predictions)]
    if args.format == "json":
        print(json.dumps([{"path": p, "predictions": preds} for p, preds in rows], indent=2))
    elif args.format == "csv":
        print("path,rank,label,score")
        for path, preds in rows:
            for rank, p in enumerate(preds, 1):
                print(f"{json.dumps(path)},{rank},{json.dumps(p['label'])},{p['score']:.6f}")
    else:
        width = max([len(p) for p, _ in rows] + [4])
        for path, preds in rows:
            print(f"{path:<{width}}  " + "  ".join(f"{p['label']} {p['score']:.3f}" for p in preds))
    return 1 if failures and not rows else 0


def cmd_embed(args) -> int:
    """Clip embeddings of a run (or a pretrained catalogue name) to ``--out X.npy`` plus ``X.npy.json`` (the paths,
    one per row, the run and the dimension); a file that fails is reported and left out, and the exit code is 1."""
    import numpy as np

    from .inference import load
    from .io_utils import write_atomic, write_json_atomic
    from .isolated_decoding import DecoderPool
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: embeddings are written as a .npy file")
    clf = load(args.run, args.device, args.amp)
    paths, rows, failures = [], [], []
    with DecoderPool(workers=1) as decoders:
        for chunk in _decoded_chunks(_audio_paths(args.paths), decoders.read_mono, clf.sample_rate, failures):
            rows.append(clf.embeddings([clip for _, clip in chunk]))
            paths += [str(path) for path, _ in chunk]
    if not paths:
        raise ValueError(f"no audio could be read from {' '.join(args.paths)}")
    array = np.concatenate(rows).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(out, buf.getvalue())
    write_json_atomic(out.with_name(out.name + ".json"), {"run": str(args.run), "model": clf.config["model"],
                                                          "dim": int(array.shape[1]), "paths": paths})
    print(f"wrote {out} ({array.shape[0]} x {array.shape[1]} float32) and {out.name}.json"
          + (f"; {len(failures)} file(s) failed" if failures else ""))
    return 1 if failures else 0


def cmd_export(args) -> int:
    from .export import export_onnx
    out = export_onnx(args.run, args.out, opset=args.opset)
    meta = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    diff = meta.get("verified_max_abs_diff")
    print(f"wrote {out} (+ {out.name}.json; {meta.get('exporter')} exporter, opset {meta.get('opset')}"
          + (f", max abs logit difference vs PyTorch {diff:.2e}" if diff is not None else "") + ")")
    return 0


def cmd_cv(args) -> int:
    from .training.config import TrainConfig
    from .training.crossval import cross_validate
    settings = {name: getattr(args, name) for name in TrainConfig.field_names() if name != "test_fold"}
    keep_activations_in_heap()  # as cmd_train
    cross_validate(args.data, args.out, folds=args.folds, adapt=args.adapt, jobs=args.jobs, **settings)
    return 0


def cmd_adapt(args) -> int:
    from .adaptation import adapt_run
    record = adapt_run(args.run, _audio_paths(args.paths), args.out, args.max_windows, args.cache_dir, args.device,
                       args.seed)
    print(f"adapted {record['batchnorm_layers']} batch-norm layer(s) of {args.run} to {record['windows']} window(s) "
          f"from {record['files']} file(s)" + (f" ({record['skipped_files']} skipped)" if record["skipped_files"] else "")
          + f"; run folder: {args.out}")
    return 0


def cmd_models(args) -> int:
    from .models.summary import model_table
    from .weights import catalogue_table
    print(model_table(sample_rate=args.sample_rate))
    print("\npretrained weights (--pretrained NAME; predict/serve/export/embed NAME):")
    print(catalogue_table())
    return 0


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .serving import create_app
    except ImportError as e:
        raise RuntimeError(f"serving needs the 'serve' extra (pip install 'audioclf[serve]'): {e}") from None
    import inspect

    keep_activations_in_heap()  # batched forward passes reuse heap blocks instead of page-faulting fresh ones
    settings = [name for name in inspect.signature(create_app).parameters if name != "run_dir"]  # one flag each
    app = create_app(args.run, **{name: getattr(args, name) for name in settings})
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_amp_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", action="store_true",
                   help="run the network under bf16 autocast, as training does: about 1.6x the throughput on "
                        "batches where bf16 is native (CPUs with AVX-512 BF16 or AMX, recent GPUs), slower where it "
                        "is emulated; scores move by up to about 1e-2 (default: float32, as the ONNX export)")


def build_parser() -> argparse.ArgumentParser:
    from .training.config import TrainConfig
    parser = argparse.ArgumentParser(prog="audioclf", description="Train, evaluate and deploy audio classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a data set")
    p.add_argument("data", help="class folders, a CSV manifest, a folder with --pattern, or tar shards (folder, "
                                  "shard-{000000..000009}.tar, http(s) URL)")
    p.add_argument("--out", required=True, help="run folder to write")
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="cross-validate: one run per fold, mean +- std")
    p.add_argument("data")
    p.add_argument("--out", required=True, help="folder for the fold runs and cv_report.json")
    p.add_argument("--folds", type=int, default=5, help="K when the data declares no folds")
    p.add_argument("--adapt", type=int, default=0, metavar="N",
                   help="also adapt each fold's model to N unlabelled clips of its test fold (a held-out speaker, "
                        "device or site; see `audioclf adapt`) and score the other test clips before and after")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N folds at once, each in its own process with 1/N of the threads and its output in "
                        "OUT/fold-NAME.log: on a CPU, small models use the cores better side by side than split "
                        "between one fold's threads")
    add_dataclass_flags(p, TrainConfig, skip=("test_fold",))
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("adapt", help="adapt a run to a new recording domain from unlabelled audio (batch-norm "
                                     "statistics)")
    p.add_argument("run")
    p.add_argument("paths", nargs="+", help="audio files or folders from the new domain (labels not needed)")
    p.add_argument("--out", required=True, help="run folder to write (the source run is kept)")
    p.add_argument("--max-windows", type=int, default=None,
                   help="windows drawn at random from the audio at most (default: audioclf.adaptation's 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("pack", help="decode a data set into tar shards (WebDataset layout) for streaming")
    p.add_argument("data", help="class folders, a CSV manifest, or a folder with --pattern")
    p.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar and dataset.json")
    p.add_argument("--shard-size", type=int, default=1000, help="clips per shard")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--pattern", default=None)
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("evaluate", help="evaluate a run on labelled data")
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--test-fold", default=None)
    p.add_argument("--pattern", default=None)
    p.add_argument("--out", default=None, help="report folder (default RUN/evaluation)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu")
    add_amp_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="top-k labels for audio files or folders")
    p.add_argument("run", help="run folder, .onnx file, or pretrained catalogue name (mn04_as: AudioSet tags)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--device", default="cpu")
    add_amp_flag(p)
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="torch (run folder) or onnx (RUN/model.onnx, exported if missing, or a .onnx file); "
                        "default: onnx for a .onnx path, torch otherwise")
    p.add_argument("--window", type=float, default=None, metavar="S",
                   help="long recordings: score S-second windows and merge them into events")
    p.add_argument("--hop", type=float, default=None, metavar="S", help="window hop (default: half a window)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="event threshold (default: the run's thresholds for multi-label runs, else 0.5)")
    p.add_argument("--min-duration", type=float, default=0.0, metavar="S", help="drop shorter events")
    p.add_argument("--median", type=int, default=1, metavar="N", help="median filter over N windows (odd)")
    p.add_argument("--block", type=float, default=60.0, metavar="S", help="streaming block length in seconds")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("embed", help="clip embeddings (the features the head takes) of audio files, as a .npy array")
    p.add_argument("run", help="run folder or pretrained catalogue name (mn04_as)")
    p.add_argument("paths", nargs="+", help="audio files or folders")
    p.add_argument("--out", required=True, help="the .npy file to write (+ OUT.json: the paths, one per row)")
    p.add_argument("--device", default="cpu")
    add_amp_flag(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("export", help="export a run to ONNX (waveform in, logits out; front end in the graph)")
    p.add_argument("run", help="run folder or pretrained catalogue name (mn04_as)")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", default=None, help="output file (default RUN/model.onnx)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP service with a web page: POST audio to /v1/classify, docs at /docs")
    p.add_argument("run", help="run folder or pretrained catalogue name (mn04_as)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="requests per forward pass at most")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for requests still arriving")
    p.add_argument("--micro-batching", action=argparse.BooleanOptionalAction, default=True,
                   help="batch concurrent requests (--no-micro-batching: one forward pass per request)")
    p.add_argument("--queue-size", type=int, default=256, help="requests waiting at most; more get 503")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (413 above)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest audio (413 above)")
    p.add_argument("--top-k", type=int, default=5, help="labels per answer unless the request sets top_k")
    p.add_argument("--device", default="cpu")
    add_amp_flag(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", help="list registered models with parameters and GFLOPs, and the pretrained weights")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.set_defaults(func=cmd_models)
    return parser


_ARGV: list[str] | None = None  # main()'s argv when given (else sys.argv), for --nproc re-launches


def main(argv=None) -> int:
    global _ARGV
    _ARGV = list(argv) if argv is not None else None
    args = build_parser().parse_args(argv)
    from .audio import AudioDecodeError
    from .checkpoint import CheckpointError
    from .data.manifest import ManifestError
    try:
        return args.func(args)
    except (AudioDecodeError, CheckpointError, ManifestError, ValueError, RuntimeError, OSError) as e:
        if isinstance(e, OSError) and e.strerror and (not e.filename or str(e.filename) in e.strerror):
            e = e.strerror  # io_utils' messages already say "cannot write PATH: reason"; drop "[Errno N]"
        print(f"audioclf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
