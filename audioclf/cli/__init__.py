"""The ``audioclf`` command: train, cv, adapt, pack, evaluate, predict, embed, export, serve, models.

Each command's flags come from one settings dataclass (:data:`COMMANDS`), the same the Python function takes."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .flags import HelpFormatter, Parser, add_dataclass_flags

DATA = "class folders, a CSV manifest or a folder with --pattern"
RUN = "run folder or pretrained catalogue name (mn04_as)"
PATHS = "audio files or folders"


@dataclass
class Command:
    help: str
    handler: str  # the function in .commands or .predict
    arguments: tuple  # (name, help) positionals; a name starting "--" is a required flag; "+" after it: one or more
    settings: tuple = ()  # settings dataclasses, imported by name: (module, class, fields to skip)


COMMANDS = {
    "train": Command("train a model on a data set", "commands.cmd_train",
                     (("data", "class folders, a CSV manifest, a folder with --pattern, or tar shards (folder, "
                                "shard-{000000..000009}.tar, http(s) URL)"),
                      ("--out", "run folder to write (new or empty; see --overwrite, --resume)")),
                     (("..training.config", "TrainConfig", ()),)),
    "cv": Command("cross-validate: one run per fold, mean +- std", "commands.cmd_cv",
                  (("data", DATA), ("--out", "folder for the fold runs and cv_report.json (new or empty; --resume "
                                             "keeps the folds already finished and continues the others from "
                                             "their saved state)")),
                  (("..training.crossval", "CVConfig", ()), ("..training.config", "TrainConfig", "CV_SKIPS"))),
    "adapt": Command("adapt a run to a new recording domain from unlabelled audio (batch-norm statistics)",
                     "commands.cmd_adapt",
                     (("run", "run folder to adapt"), ("paths+", "audio files or folders from the new domain (labels "
                                                                 "not needed)"),
                      ("--out", "run folder to write (new or empty; the source run is kept)")),
                     (("..adaptation", "AdaptConfig", ()),)),
    "pack": Command("decode a data set into tar shards (WebDataset layout) for streaming", "commands.cmd_pack",
                    (("data", DATA), ("--out", "folder for shard-NNNNNN.tar and dataset.json (new or empty)")),
                    (("..data.shards", "PackConfig", ()),)),
    "evaluate": Command("evaluate a run on labelled data", "commands.cmd_evaluate", (("run", RUN), ("data", DATA)),
                        (("..evaluation.evaluate", "EvaluateConfig", ()),)),
    "predict": Command("top-k labels for audio files or folders", "predict.cmd_predict",
                       (("run", "run folder, .onnx file, or pretrained catalogue name (mn04_as: AudioSet tags)"),
                        ("paths+", PATHS)), ((".predict", "PredictConfig", ()),)),
    "embed": Command("clip embeddings (the features the head takes) of audio files, as a .npy array",
                     "predict.cmd_embed", (("run", RUN), ("paths+", PATHS)), ((".predict", "EmbedConfig", ()),)),
    "export": Command("export a run to ONNX (waveform in, logits out; front end in the graph)", "commands.cmd_export",
                      (("run", RUN),), ((".commands", "ExportConfig", ()),)),
    "serve": Command("HTTP service with a web page: POST audio to /v1/classify, docs at /docs", "commands.cmd_serve",
                     (("run", RUN),), (("..serving.config", "ServeConfig", ()),)),
    "models": Command("list registered models with parameters and GFLOPs, and the pretrained weights",
                      "commands.cmd_models", (), ((".commands", "ModelsConfig", ()),)),
}
OUT_FOLDERS = ("train", "cv", "adapt", "pack")  # commands whose --out is a folder they create


def build_parser() -> argparse.ArgumentParser:
    from importlib import import_module

    from .. import __version__
    parser = Parser(prog="audioclf", description="Train, evaluate and deploy audio classifiers.",
                    formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"audioclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, formatter_class=HelpFormatter)
        for arg, text in command.arguments:
            if arg.startswith("--"):
                p.add_argument(arg, required=True, help=text)
            else:
                p.add_argument(arg.rstrip("+"), nargs="+" if arg.endswith("+") else None, help=text)
        for module, cls, skip in command.settings:
            module = import_module(module, __package__)
            skip = getattr(module, skip) if isinstance(skip, str) else skip
            add_dataclass_flags(p, getattr(module, cls), skip=skip)
        p.set_defaults(handler=command.handler)
    return parser


def main(argv=None) -> int:
    from importlib import import_module
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the subcommand, as its other errors are
        parser.exit(2, f"audioclf {args.command}: error: unrecognized arguments: {' '.join(extra)} "
                       f"(see audioclf {args.command} --help)\n")
    args.argv = list(argv) if argv is not None else None  # for --nproc re-launches
    module, func = args.handler.split(".")
    return run(args, getattr(import_module(f".{module}", __package__), func))


def run(args, handler: Callable) -> int:
    """Run a command's handler: a known failure is one line on stderr and exit code 2; a failed command leaves no
    half-made output folder behind."""
    from ..audio import AudioDecodeError
    from ..checkpoint import CheckpointError
    from ..data.manifest import ManifestError
    from ..devices import check_device
    from ..run_folder import discard_if_new
    out = Path(args.out) if args.command in OUT_FOLDERS else None
    existed = out is None or out.exists()
    status = 1
    try:
        if hasattr(args, "device"):
            check_device(args.device)
        status = handler(args)
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
        if status != 0 and not existed:
            discard_if_new(out, existed)
