"""Convert an index of videos into webdataset tar shards for training with ``data.shards``:
``python scripts/make_shards.py --index data/webvid/results_2M_train.csv --root data/webvid/videos --out data/webvid/shards``.

The index is read as training reads ``data.index`` (CSV, JSON lines, WebVid in the page_dir or flat
layout). Rerunning after a kill keeps the shards already written. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a git checkout works without installing

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write an index's videos and captions as webdataset tar shards.")
    parser.add_argument("--index", required=True, help="CSV (path,caption or WebVid's columns) or JSON lines")
    parser.add_argument("--root", help="where relative video paths start (default: the index's folder)")
    parser.add_argument("--out", required=True, help="folder for the shards (000000.tar, 000001.tar, ...)")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="videos per shard (default 1000); training needs at least processes x loader "
                             "workers shards")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from livephoto_core.errors import LivePhotoError
    from livephoto_core.training.data import read_index
    from livephoto_core.training.shards import write_shards

    try:
        counts = write_shards(read_index(args.index, args.root), args.out, args.samples_per_shard)
    except LivePhotoError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # e.g. a full disk: the shards renamed into place so far are complete
        print(f"error: {type(error).__name__}: {error}; fix that and run the same command again", file=sys.stderr)
        return 1
    print(f"{counts['written']} of {counts['total']} videos written to {counts['shards'] - counts['existing_shards']} "
          f"shards in {args.out} ({counts['existing_shards']} shards kept from an earlier run; skipped "
          f"{counts['missing']} missing, {counts['not_video']} not videos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
