"""Batches: several photos and prompts, one video per pair, by one rule for the nodes, the CLI and the API.

The rule (``pair_photos_and_prompts``): one photo with each of several prompts, each of several
photos with one prompt, or as many photos as prompts, photo k with prompt k. A text field holds
one prompt a line (``prompt_lines``). A manifest (``read_manifest``) lists one video a row; a row's
output name comes from the row and the run's settings (``row_output_name``), so a rerun finds the
videos already written and renders only the rest.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .checks import check_seed, check_text
from .errors import InvalidInputError
from .fileio import check_input_path

MANIFEST_COLUMNS = ("photo", "prompt", "intensity", "seed")
REQUIRED_COLUMNS = ("photo", "prompt")


def prompt_lines(text: str, what: str = "prompt") -> list[str]:
    """The prompts of a text field (`what` names it in messages), one a line, stripped; blank lines are
    skipped. A field with no words at all is one empty prompt (as a negative prompt usually is)."""
    lines = [line.strip() for line in check_text(text, what).splitlines()]
    return [line for line in lines if line] or [""]


def how_many(count: int, noun: str) -> str:
    """"1 photo", "2 photos": a count in a message."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def pair_photos_and_prompts(num_photos: int, num_prompts: int) -> list[tuple[int, int]]:
    """The (photo, prompt) index pairs of a batch, one per video, in order: one photo with each prompt,
    each photo with the one prompt, or photo k with prompt k when there are as many of each."""
    if num_photos < 1 or num_prompts < 1:
        raise InvalidInputError(f"a batch needs a photo and a prompt; got {how_many(num_photos, 'photo')} and "
                                f"{how_many(num_prompts, 'prompt')}")
    if num_photos != num_prompts and 1 not in (num_photos, num_prompts):
        raise InvalidInputError(
            f"{num_photos} photos and {num_prompts} prompts do not pair up: give one photo (animated with each "
            f"prompt), one prompt (for each photo), or as many prompts as photos (photo k with prompt k)"
        )
    return [(min(k, num_photos - 1), min(k, num_prompts - 1)) for k in range(max(num_photos, num_prompts))]


@dataclass(frozen=True)
class BatchRow:
    """One video of a batch."""

    index: int  # its place, from 1: the manifest's row (the header not counted), or the pair's
    photo: Path
    prompt: str
    intensity: str | None  # as written, a level or a schedule; None: the run's (--intensity or the model's)
    seed: int | None  # None: the run's (--seed, or a new one)
    where: str  # names the row in messages: "rows.csv row 3 (line 4)", "video 2"


def batch_rows(photos: list[str], prompt_text: str) -> list[BatchRow]:
    """The rows of photos and a text of prompts (one a line), paired by ``pair_photos_and_prompts``."""
    prompts = prompt_lines(prompt_text)
    pairs = pair_photos_and_prompts(len(photos), len(prompts))
    return [BatchRow(k + 1, Path(photos[p]), prompts[q], None, None, f"video {k + 1}")
            for k, (p, q) in enumerate(pairs)]


def read_manifest(path: str | os.PathLike) -> list[BatchRow]:
    """The rows of a CSV manifest with a header naming its columns: photo and prompt (required), intensity
    and seed (optional; an empty cell takes the run's). Photo paths are relative to the manifest's folder.
    Every row is checked here: a missing photo, an empty prompt or a bad seed names its row."""
    path = check_input_path(path, "a CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # utf-8-sig: spreadsheets write a BOM
            reader = csv.DictReader(file)
            columns = [name.strip() for name in reader.fieldnames or []]
            unknown = [name for name in columns if name not in MANIFEST_COLUMNS]
            missing = [name for name in REQUIRED_COLUMNS if name not in columns]
            if unknown or missing:
                raise InvalidInputError(
                    f"{path}: the header is {','.join(columns) or '(empty)'}; a manifest's first line names its "
                    f"columns, {','.join(MANIFEST_COLUMNS)} (intensity and seed may be left out)"
                )
            reader.fieldnames = columns
            rows = [_manifest_row(path, index, reader.line_num, cells)
                    for index, cells in enumerate(reader, start=1)]
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path} is not UTF-8 text; save the manifest as CSV (UTF-8)") from None
    except csv.Error as error:
        raise InvalidInputError(f"{path} is not a readable CSV file: {error}") from None
    if not rows:
        raise InvalidInputError(f"{path} has a header but no rows; add a row per video")
    return rows


def _manifest_row(manifest: Path, index: int, line: int, cells: dict) -> BatchRow:
    where = f"{manifest} row {index} (line {line})"
    if None in cells:  # csv.DictReader's key for cells beyond the header
        raise InvalidInputError(f"{where} has more cells than the header names; quote a cell that holds a comma")
    text = {name: (cells.get(name) or "").strip() for name in MANIFEST_COLUMNS}
    if not text["photo"]:
        raise InvalidInputError(f"{where} has no photo; every row needs a photo and a prompt")
    if not text["prompt"]:
        raise InvalidInputError(f"{where} has no prompt; every row needs a photo and a prompt")
    try:
        photo = check_input_path(manifest.parent / text["photo"], "an image file")
        check_text(text["prompt"])
        seed = None
        if text["seed"]:
            try:
                seed = int(text["seed"])
            except ValueError:
                raise InvalidInputError(f"seed must be a whole number; got {text['seed']!r}") from None
            check_seed(seed)
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: {error}") from None
    return BatchRow(index, photo, text["prompt"], text["intensity"] or None, seed, where)


def row_output_name(row: BatchRow, intensity: str | None, seed: int | None, settings: dict, suffix: str) -> str:
    """``0003-beach-1a2b3c4d.webp``: the row's place, its photo's name and a hash of what makes its video
    (photo, prompt, the intensity and seed it gets, the run's other `settings`). A rerun with the same
    rows and settings finds the same names; a row or setting changed gets a new one."""
    made_of = [os.path.abspath(row.photo), row.prompt, intensity, seed, settings]
    digest = hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:8]
    return f"{row.index:04d}-{row.photo.stem}-{digest}{suffix}"
