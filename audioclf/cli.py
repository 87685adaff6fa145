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


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``audioclf train: error: ...``, exit 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's default in its help, unless the help already speaks of its default or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def checked(kind, **bounds):
    """An argparse ``type`` that converts with ``kind`` and checks the field-style ``bounds`` (min, max, gt, lt)."""
    from .training.config import check_value

    class Field:  # what check_value reads: a name for the message and the bounds
        name, metadata = "value", bounds

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if kind is float and value != value:
            raise argparse.ArgumentTypeError("not a number: nan")
        try:
            check_value(Field, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("--value ", "")) from None
        return value
    convert.__name__ = kind.__name__
    return convert


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--flag`` per dataclass field; booleans get ``--x/--no-x``; help, choices and bounds from the field's
    metadata."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        default = f.default if f.default is not MISSING else None
        meta = f.metadata
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=meta.get("help"))
        else:
            bounds = {k: meta[k] for k in ("min", "max", "gt", "lt") if k in meta}
            parser.add_argument(flag, type=checked(_TYPES[kind], **bounds) if bounds else _TYPES[kind],
                                choices=meta.get("choices"), default=default, help=meta.get("help"),
                                metavar=None if "choices" in meta else f.name.upper())


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
                cache_dir=args.cache_dir, overwrite=args.overwrite)
    print(f"packed {info['samples']} clips at {info['sample_rate']} Hz into {len(info['shards'])} shard(s) in {args.out}"
          + (f"; {info['skipped']} file(s) skipped" if info["skipped"] else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation.evaluate import evaluate
    evaluate(args.run, args.data, test_fold=args.test_fold, pattern=args.pattern, out=args.out,
             cache_dir=args.cache_dir, device=args.device, amp=args.amp,
             include_training_clips=args.include_training_clips)
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
    from .onnx_predictor import OnnxClassifier, read_onnx_metadata, stale_reason
    if run.is_dir():
        from .export import ONNX_NAME, export_onnx
        onnx = run / ONNX_NAME
        why = f"no {ONNX_NAME} in {run}" if not onnx.is_file() else stale_reason(onnx, read_onnx_metadata(onnx))
        if why:
            print(f"{why}: exporting it first", file=sys.stderr)
            print(f"exported {export_onnx(run)}", file=sys.stderr)
    return OnnxClassifier(run)


def _report_error(path, error, fmt: str) -> None:
    """A failed input: named on stderr (the table names it in place too)."""
    if fmt != "table":
        print(f"error: {error}", file=sys.stderr)


def _predict_windows(args, clf, paths) -> int:
    """``predict --window``: per-window scores and merged events for each (long) recording; a file that cannot be
    read gets an entry with its error, and the exit code is 1."""
    from .audio import AudioDecodeError
    from .isolated_decoding import DecoderPool
    from .longform import events, scan
    labels = list(clf.labels)
    threshold = args.threshold
    if threshold is None:
        threshold = list(clf.thresholds) if clf.multilabel else 0.5
    results = []  # (path, times, scores, events) or (path, error)
    with DecoderPool(workers=1) as decoders:  # files only FFmpeg reads: a decoder crash costs that file
        for path in paths:
            try:
                times, scores = scan(clf, path, args.window, args.hop, block_s=args.block,
                                     read_blocks=decoders.blocks)
            except AudioDecodeError as e:
                _report_error(path, e, args.format)
                results.append((str(path), e.reason))
                continue
            found = events(times, scores, labels, threshold=threshold, min_duration=args.min_duration,
                           median_filter=args.median)
            results.append((str(path), times, scores, found))
    if args.format == "json":
        print(json.dumps([{"path": r[0], "error": r[1]} if len(r) == 2 else
                          {"path": r[0],
                           "windows": [{"start": round(float(t[0]), 4), "end": round(float(t[1]), 4),
                                        "scores": {lab: round(float(v), 6) for lab, v in zip(labels, row)}}
                                       for t, row in zip(r[1], r[2])],
                           "events": [{**e, "start": round(e["start"], 4), "end": round(e["end"], 4),
                                       "peak": round(e["peak"], 6)} for e in r[3]]}
                          for r in results], indent=2))
    elif args.format == "csv":
        print(",".join(["path", "start", "end"] + [json.dumps(lab) for lab in labels] + ["error"]))
        for r in results:
            if len(r) == 2:
                print(",".join([json.dumps(r[0]), "", ""] + [""] * len(labels) + [json.dumps(r[1])]))
                continue
            for t, row in zip(r[1], r[2]):
                print(",".join([json.dumps(r[0]), f"{t[0]:.4f}", f"{t[1]:.4f}"] + [f"{v:.6f}" for v in row] + [""]))
    else:
        for r in results:
            if len(r) == 2:
                print(f"{r[0]}: error: {r[1]}")
                continue
            print(f"{r[0]}: {len(r[1])} windows, {len(r[3])} events")
            for e in r[3]:
                print(f"  {e['start']:10.2f} - {e['end']:10.2f} s  {e['label']}  (peak {e['peak']:.3f})")
    return 1 if any(len(r) == 2 for r in results) else 0


PREDICT_CHUNK_FILES, PREDICT_CHUNK_SECONDS = 32, 600  # predict over many files: clips held per batched call at most


def _decoded_chunks(paths, read, sample_rate: int):
    """``[(path, clip or AudioDecodeError)]`` groups of at most ``PREDICT_CHUNK_FILES`` files and about
    ``PREDICT_CHUNK_SECONDS`` of audio, in the order of ``paths``, decoded by ``read(path, sample_rate)``."""
    from .audio import AudioDecodeError
    chunk, samples = [], 0
    for path in paths:
        try:
            clip = read(path, sample_rate)
        except AudioDecodeError as e:
            clip = e
        chunk.append((path, clip))
        samples += 0 if isinstance(clip, Exception) else len(clip)
        if len(chunk) == PREDICT_CHUNK_FILES or samples >= PREDICT_CHUNK_SECONDS * sample_rate:
            yield chunk
            chunk, samples = [], 0
    if chunk:
        yield chunk


def _predicted_rows(clf, paths, top_k: int, fmt: str) -> list[tuple[str, list | str]]:
    """``(path, predictions)`` or ``(path, error message)`` per input file, in order; files share forward passes."""
    from .isolated_decoding import DecoderPool
    rows = []
    with DecoderPool(workers=1) as decoders:  # files only FFmpeg reads: a decoder crash costs that file
        for chunk in _decoded_chunks(paths, decoders.read_mono, clf.sample_rate):
            good = [(path, clip) for path, clip in chunk if not isinstance(clip, Exception)]
            answers = iter(clf.predict([clip for _, clip in good], top_k=top_k, sampling_rate=clf.sample_rate)
                           if good else [])
            for path, clip in chunk:
                if isinstance(clip, Exception):
                    _report_error(path, clip, fmt)
                    rows.append((str(path), clip.reason))
                else:
                    rows.append((str(path), next(answers)))
    return rows


def cmd_predict(args) -> int:
    """Top-k labels of every input file, one row each, failures as rows with their error; exit code 1 when any
    input failed."""
    clf = _predictor(args)
    paths = _audio_paths(args.paths)
    if getattr(args, "window", None) is not None:
        return _predict_windows(args, clf, paths)
    rows = _predicted_rows(clf, paths, args.top_k, args.format)
    if args.format == "json":
        print(json.dumps([{"path": p, "error": preds} if isinstance(preds, str) else {"path": p, "predictions": preds}
                          for p, preds in rows], indent=2))
    elif args.format == "csv":
        print("path,rank,label,score,error")
        for path, preds in rows:
            if isinstance(preds, str):
                print(f"{json.dumps(path)},,,,{json.dumps(preds)}")
            for rank, p in enumerate([] if isinstance(preds, str) else preds, 1):
                print(f"{json.dumps(path)},{rank},{json.dumps(p['label'])},{p['score']:.6f},")
    else:
        width = max([len(p) for p, _ in rows] + [4])
        for path, preds in rows:
            print(f"{path:<{width}}  " + (f"error: {preds}" if isinstance(preds, str) else
                                          "  ".join(f"{p['label']} {p['score']:.3f}" for p in preds)))
    return 1 if any(isinstance(preds, str) for _, preds in rows) else 0


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
        for chunk in _decoded_chunks(_audio_paths(args.paths), decoders.read_mono, clf.sample_rate):
            failures += [path for path, clip in chunk if isinstance(clip, Exception)]
            for path, clip in chunk:
                if isinstance(clip, Exception):
                    print(f"error: {clip}", file=sys.stderr)
            good = [(path, clip) for path, clip in chunk if not isinstance(clip, Exception)]
            if good:
                rows.append(clf.embeddings([clip for _, clip in good]))
                paths += [str(path) for path, _ in good]
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
    settings = {name: getattr(args, name) for name in TrainConfig.field_names() if name not in CV_SKIPS}
    keep_activations_in_heap()  # as cmd_train
    cross_validate(args.data, args.out, folds=args.folds, adapt=args.adapt, jobs=args.jobs, **settings)
    return 0


def cmd_adapt(args) -> int:
    from .adaptation import adapt_run
    record = adapt_run(args.run, _audio_paths(args.paths), args.out, args.max_windows, args.cache_dir, args.device,
                       args.seed, overwrite=args.overwrite)
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


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (a GPU where there is one)")


def odd_count(text: str) -> int:
    value = checked(int, min=1)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value}: must be odd")
    return value


POSITIVE_INT, POSITIVE = checked(int, min=1), checked(float, gt=0)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .predictions import DEFAULT_TOP_K
    from .training.config import TrainConfig
    parser = Parser(prog="audioclf", description="Train, evaluate and deploy audio classifiers.",
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"audioclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(name, **kw):
        return sub.add_parser(name, formatter_class=HelpFormatter, **kw)

    p = command("train", help="train a model on a data set")
    p.add_argument("data", help="class folders, a CSV manifest, a folder with --pattern, or tar shards (folder, "
                                  "shard-{000000..000009}.tar, http(s) URL)")
    p.add_argument("--out", required=True, help="run folder to write (new or empty; see --overwrite, --resume)")
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = command("cv", help="cross-validate: one run per fold, mean +- std")
    p.add_argument("data", help="class folders, a CSV manifest or a folder with --pattern")
    p.add_argument("--out", required=True, help="folder for the fold runs and cv_report.json (new or empty; "
                                                "--resume keeps the folds already finished)")
    p.add_argument("--folds", type=checked(int, min=2), default=5, help="K when the data declares no folds")
    p.add_argument("--adapt", type=checked(int, min=0), default=0, metavar="N",
                   help="also adapt each fold's model to N unlabelled clips of its test fold (a held-out speaker, "
                        "device or site; see `audioclf adapt`) and score the other test clips before and after")
    p.add_argument("--jobs", type=POSITIVE_INT, default=1, metavar="N",
                   help="train N folds at once, each in its own process with 1/N of the threads and its output in "
                        "OUT/fold-NAME.log: on a CPU, small models use the cores better side by side than split "
                        "between one fold's threads")
    add_dataclass_flags(p, TrainConfig, skip=CV_SKIPS)
    p.set_defaults(func=cmd_cv)

    p = command("adapt", help="adapt a run to a new recording domain from unlabelled audio (batch-norm statistics)")
    p.add_argument("run", help="run folder to adapt")
    p.add_argument("paths", nargs="+", help="audio files or folders from the new domain (labels not needed)")
    p.add_argument("--out", required=True, help="run folder to write (new or empty; the source run is kept)")
    p.add_argument("--max-windows", type=POSITIVE_INT, default=None,
                   help="windows drawn at random from the audio at most (default: audioclf.adaptation's 4096)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the windows drawn")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--cache-dir", default=None, help="decoded-audio cache (default ~/.cache/audioclf)")
    add_device_flag(p)
    p.set_defaults(func=cmd_adapt)

    p = command("pack", help="decode a data set into tar shards (WebDataset layout) for streaming")
    p.add_argument("data", help="class folders, a CSV manifest, or a folder with --pattern")
    p.add_argument("--out", required=True, help="folder for shard-NNNNNN.tar and dataset.json (new or empty)")
    p.add_argument("--shard-size", type=POSITIVE_INT, default=1000, help="clips per shard")
    p.add_argument("--overwrite", action="store_true", help="replace the shards already in --out")
    p.add_argument("--sample-rate", type=checked(int, min=1000, max=384000), default=16000,
                   help="sample rate of the decoded audio in Hz")
    p.add_argument("--pattern", default=None, help="regex with (?P<label>) [(?P<group>) (?P<fold>)] on relative paths")
    p.add_argument("--cache-dir", default=None, help="decoded-audio cache (default ~/.cache/audioclf)")
    p.set_defaults(func=cmd_pack)

    p = command("evaluate", help="evaluate a run on labelled data")
    p.add_argument("run", help="run folder or pretrained catalogue name")
    p.add_argument("data", help="class folders, a CSV manifest or a folder with --pattern")
    p.add_argument("--test-fold", default=None, help="score only this declared fold (default: every file)")
    p.add_argument("--pattern", default=None, help="regex with (?P<label>) [(?P<group>) (?P<fold>)] on relative paths")
    p.add_argument("--out", default=None, help="report folder (default RUN/evaluation)")
    p.add_argument("--include-training-clips", action="store_true",
                   help="also score the clips the run trained or validated on (left out by default: they flatter)")
    p.add_argument("--cache-dir", default=None, help="decoded-audio cache (default ~/.cache/audioclf)")
    add_device_flag(p)
    add_amp_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = command("predict", help="top-k labels for audio files or folders")
    p.add_argument("run", help="run folder, .onnx file, or pretrained catalogue name (mn04_as: AudioSet tags)")
    p.add_argument("paths", nargs="+", help="audio files or folders")
    p.add_argument("--top-k", type=POSITIVE_INT, default=DEFAULT_TOP_K,
                   help="labels per file (multi-label runs add every further label over its threshold)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="output; a file that cannot be read gets a row with its error (and the exit code is 1)")
    add_device_flag(p)
    add_amp_flag(p)
    p.add_argument("--backend", choices=("torch", "onnx"), default=None,
                   help="torch (run folder) or onnx (RUN/model.onnx, exported if missing or stale, or a .onnx "
                        "file); default: onnx for a .onnx path, torch otherwise")
    p.add_argument("--window", type=POSITIVE, default=None, metavar="S",
                   help="long recordings: score S-second windows and merge them into events")
    p.add_argument("--hop", type=POSITIVE, default=None, metavar="S", help="window hop (default: half a window)")
    p.add_argument("--threshold", type=checked(float, min=0, max=1), default=None, metavar="T",
                   help="event threshold (default: the run's thresholds for multi-label runs, else 0.5)")
    p.add_argument("--min-duration", type=checked(float, min=0), default=0.0, metavar="S", help="drop shorter events")
    p.add_argument("--median", type=odd_count, default=1, metavar="N", help="median filter over N windows (odd)")
    p.add_argument("--block", type=POSITIVE, default=60.0, metavar="S", help="streaming block length in seconds")
    p.set_defaults(func=cmd_predict)

    p = command("embed", help="clip embeddings (the features the head takes) of audio files, as a .npy array")
    p.add_argument("run", help="run folder or pretrained catalogue name (mn04_as)")
    p.add_argument("paths", nargs="+", help="audio files or folders")
    p.add_argument("--out", required=True, help="the .npy file to write (+ OUT.json: the paths, one per row)")
    add_device_flag(p)
    add_amp_flag(p)
    p.set_defaults(func=cmd_embed)

    p = command("export", help="export a run to ONNX (waveform in, logits out; front end in the graph)")
    p.add_argument("run", help="run folder or pretrained catalogue name (mn04_as)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    p.add_argument("--out", default=None, help="output file (default RUN/model.onnx)")
    p.add_argument("--opset", type=checked(int, min=13, max=23), default=17, help="ONNX opset version")
    p.set_defaults(func=cmd_export)

    p = command("serve", help="HTTP service with a web page: POST audio to /v1/classify, docs at /docs")
    p.add_argument("run", help="run folder or pretrained catalogue name (mn04_as)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=checked(int, min=0, max=65535), default=8000, help="TCP port (0: any free one)")
    p.add_argument("--max-batch", type=POSITIVE_INT, default=32, help="requests per forward pass at most")
    p.add_argument("--max-wait-ms", type=checked(float, min=0), default=10.0,
                   help="how long a batch waits for requests still arriving")
    p.add_argument("--micro-batching", action=argparse.BooleanOptionalAction, default=True,
                   help="batch concurrent requests (--no-micro-batching: one forward pass per request)")
    p.add_argument("--queue-size", type=POSITIVE_INT, default=256, help="requests waiting at most; more get 503")
    p.add_argument("--max-body-mb", type=POSITIVE, default=20.0, help="largest request body (413 above)")
    p.add_argument("--max-seconds", type=POSITIVE, default=600.0, help="longest audio (413 above)")
    p.add_argument("--top-k", type=POSITIVE_INT, default=DEFAULT_TOP_K,
                   help="labels per answer unless the request sets top_k")
    add_device_flag(p)
    add_amp_flag(p)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level")
    p.set_defaults(func=cmd_serve)

    p = command("models", help="list registered models with parameters and GFLOPs, and the pretrained weights")
    p.add_argument("--sample-rate", type=checked(int, min=1000, max=384000), default=16000,
                   help="sample rate the GFLOPs are computed at")
    p.set_defaults(func=cmd_models)
    return parser


CV_SKIPS = ("test_fold", "test_fraction", "nproc")  # TrainConfig fields cv sets itself (folds; one process a fold)
OUT_FOLDERS = ("train", "cv", "adapt", "pack")  # commands whose --out is a folder they create


_ARGV: list[str] | None = None  # main()'s argv when given (else sys.argv), for --nproc re-launches


def main(argv=None) -> int:
    global _ARGV
    _ARGV = list(argv) if argv is not None else None
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, as its other errors are
        parser.exit(2, f"audioclf {args.command}: error: unrecognized arguments: {' '.join(extra)} "
                       f"(see audioclf {args.command} --help)\n")
    from .audio import AudioDecodeError
    from .checkpoint import CheckpointError
    from .data.manifest import ManifestError
    from .devices import check_device
    from .run_folder import discard_if_new
    out = Path(args.out) if args.command in OUT_FOLDERS else None
    existed = out is None or out.exists()
    status = 1
    try:
        if hasattr(args, "device"):
            check_device(args.device)
        status = args.func(args)
        return status
    except (AudioDecodeError, CheckpointError, ManifestError, ValueError, RuntimeError, OSError) as e:
        if isinstance(e, OSError) and e.strerror and (not e.filename or str(e.filename) in e.strerror):
            e = e.strerror  # io_utils' messages already say "cannot write PATH: reason"; drop "[Errno N]"
        print(f"audioclf {args.command}: error: {e}", file=sys.stderr)
        status = 2
        return status
    except KeyboardInterrupt:
        return 130
    finally:
        if status != 0 and not existed:  # a failed command leaves no empty or half-made output folder behind
            discard_if_new(out, existed)
