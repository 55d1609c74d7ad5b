"""Write the latent cache of a training config (``data.latent_cache``): the frozen VAE's latents of
the clips training will read, CLIP's hidden states of their captions and DINOv2's of their first
frames. ``python scripts/cache_latents.py --config configs/train/sd15.json --set data.latent_cache=data/webvid/cache --epochs 2``

Runs under ``accelerate launch`` too (the processes share the parts). Rerunning after a kill keeps
the parts already written; a larger ``--epochs`` adds epochs. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a git checkout works without installing

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Cache the frozen encoders' outputs for a LivePhoto training run.")
    parser.add_argument("--config", help="the training config (JSON) the cache is for")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as scripts/train.py does (repeatable)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs of clips to cache (with data.random_start every epoch has new clip starts; "
                             "without it one epoch serves all); default 1")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="storage type of the cached tensors: float32 trains exactly as without the cache; "
                             "the 16-bit types halve the disk and round every value (default float32)")
    parser.add_argument("--clips-per-part", type=int, default=256, help="clips per safetensors file (default 256)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from livephoto_core.errors import LivePhotoError
    from livephoto_core.training.engine import several_cpu_processes
    from livephoto_core.training.latent_cache import build_latent_cache
    from livephoto_core.training.recipe import load_train_config

    try:
        config = load_train_config(args.config, args.overrides)
        accelerator = Accelerator(cpu=several_cpu_processes())  # as the trainer's
        try:
            counts = build_latent_cache(config, args.epochs, args.dtype, args.clips_per_part,
                                        accelerator.process_index, accelerator.num_processes, accelerator.device,
                                        accelerator.wait_for_everyone)
        finally:
            accelerator.end_training()
            AcceleratorState._reset_state(reset_partial_state=True)  # a later call in this process starts afresh
    except LivePhotoError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # e.g. a full disk: the parts renamed into place so far are complete
        print(f"error: {type(error).__name__}: {error}; fix that and run the same command again", file=sys.stderr)
        return 1
    print(f"{config.data.latent_cache}: {counts['parts_written']} parts ({counts['clips_written']} clips) written "
          f"by this process, {counts['parts_kept']} kept from an earlier run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
