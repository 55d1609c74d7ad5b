"""Train a LivePhoto model: ``python scripts/train.py --config configs/train/demo.json [--set key=value ...] [--resume latest]``.

``--resume runs/x/checkpoints/step-000600 --export-only`` exports that checkpoint instead of training.

Also runs under ``accelerate launch`` (several processes: DDP, or FSDP with
``--config_file configs/accelerate/fsdp.yaml``). See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a git checkout works without installing

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train LivePhoto (SD-1.5, or a tiny base from scratch).")
    parser.add_argument("--config", help="training config (JSON); see configs/train/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set lr=1e-4 --set data.num_frames=8 (repeatable)")
    parser.add_argument("--resume", metavar="latest|CHECKPOINT",
                        help="continue from the newest checkpoint of output_dir (starts fresh if there is none) "
                             "or from a given checkpoint folder")
    parser.add_argument("--export-only", action="store_true",
                        help="export the checkpoint --resume names (to output_dir/export/step-N) and train nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from livephoto_core.errors import LivePhotoError
    from livephoto_core.training.recipe import load_train_config
    from livephoto_core.training.engine import train

    try:
        config = load_train_config(args.config, args.overrides)
        result = train(config, args.resume, args.export_only)
    except LivePhotoError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # e.g. a full disk: the checkpoints written so far are complete
        print(f"error: {type(error).__name__}: {error}; fix that, then continue with --resume latest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume latest", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") != "0":
        return 0  # one summary line per run, not per process
    if args.export_only:
        print(f"step {result.step} exported to {result.export}")
        return 0
    where = f"; model in {result.export}" if result.export else ""
    state = "stopped at the time limit" if result.stopped_early else "done"
    print(f"{state}: step {result.step} of {config.steps}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
