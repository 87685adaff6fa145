"""``audioclf predict`` and ``audioclf embed``: labels, windows and events, or embeddings, for audio files and
folders, one row per input; an input that fails gets a row with its error."""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..malloc import keep_activations_in_heap
from ..predictions import DEFAULT_TOP_K
from ..settings import AMP_HELP, DEVICE_HELP, option


@dataclass
class PredictConfig:
    top_k: int = option(DEFAULT_TOP_K, "labels per file (multi-label runs add every further label over its "
                                       "threshold)", min=1)
    format: str = option("table", "output; a file that cannot be read gets a row with its error (and the exit code "
                                  "is 1)", choices=("table", "json", "csv"))
    device: str = option("cpu", DEVICE_HELP)
    amp: bool = option(False, AMP_HELP)
    backend: str | None = option(None, "torch (run folder) or onnx (RUN/model.onnx, exported if missing or stale, "
                                       "or a .onnx file); default: onnx for a .onnx path, torch otherwise",
                                 choices=("torch", "onnx"))
    window: float | None = option(None, "long recordings: score S-second windows and merge them into events", gt=0,
                                  metavar="S")
    hop: float | None = option(None, "window hop (default: half a window)", gt=0, metavar="S")
    threshold: float | None = option(None, "event threshold (default: the run's thresholds for multi-label runs, "
                                           "else 0.5)", min=0, max=1, metavar="T")
    min_duration: float = option(0.0, "drop shorter events", min=0, metavar="S")
    median: int = option(1, "median filter over N windows (odd)", min=1, odd=True, metavar="N")
    block: float = option(60.0, "streaming block length in seconds", gt=0, metavar="S")


@dataclass
class EmbedConfig:
    out: str = field(metadata={"help": "the .npy file to write (+ OUT.json: the paths, one per row)"})
    device: str = option("cpu", DEVICE_HELP)
    amp: bool = option(False, AMP_HELP)


def audio_paths(paths: list[str]) -> list[Path]:
    from ..data.manifest import audio_files
    out = []
    for p in map(Path, paths):
        out += audio_files(p) if p.is_dir() else [p]
    return out


def _predictor(args):
    """The classifier for ``predict``: PyTorch from a run folder (or a pretrained catalogue name), or ONNX
    (``--backend onnx`` or a .onnx path)."""
    from ..weights import resolve_run
    run = resolve_run(args.run)
    backend = getattr(args, "backend", None) or ("onnx" if run.suffix.lower() == ".onnx" else "torch")
    if backend == "torch":
        if run.suffix.lower() == ".onnx":
            raise ValueError(f"{run} is an ONNX file: use --backend onnx (the PyTorch back end needs a run folder)")
        from ..inference import load
        keep_activations_in_heap()  # batched forward passes reuse heap blocks (audioclf.malloc)
        return load(run, args.device, args.amp)
    if args.amp:
        raise ValueError("--amp applies to the torch back end; an ONNX model runs as exported (float32)")
    from ..onnx_predictor import OnnxClassifier, read_onnx_metadata, stale_reason
    if run.is_dir():
        from ..export import ONNX_NAME, export_onnx
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
    from ..audio import AudioDecodeError
    from ..isolated_decoding import DecoderPool
    from ..longform import events, scan
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
    from ..audio import AudioDecodeError
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
    from ..isolated_decoding import DecoderPool
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
    paths = audio_paths(args.paths)
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

    from ..inference import load
    from ..io_utils import write_atomic, write_json_atomic
    from ..isolated_decoding import DecoderPool
    out = Path(args.out)
    if out.suffix != ".npy":
        raise ValueError(f"--out {out}: embeddings are written as a .npy file")
    clf = load(args.run, args.device, args.amp)
    paths, rows, failures = [], [], []
    with DecoderPool(workers=1) as decoders:
        for chunk in _decoded_chunks(audio_paths(args.paths), decoders.read_mono, clf.sample_rate):
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
