"""The batch rule shared by the nodes, the CLI and the Python API: pairing, prompt lines, row names."""

from pathlib import Path

import pytest

from livephoto_core.batch import BatchRow, pair_photos_and_prompts, prompt_lines, row_output_name
from livephoto_core.errors import InvalidInputError


@pytest.mark.parametrize(
    "photos, prompts, pairs",
    [
        (1, 1, [(0, 0)]),
        (1, 3, [(0, 0), (0, 1), (0, 2)]),  # one photo with each prompt
        (3, 1, [(0, 0), (1, 0), (2, 0)]),  # each photo with the one prompt
        (2, 2, [(0, 0), (1, 1)]),  # photo k with prompt k
    ],
)
def test_photos_and_prompts_pair_up_by_one_rule(photos, prompts, pairs):
    assert pair_photos_and_prompts(photos, prompts) == pairs


@pytest.mark.parametrize("photos, prompts, message", [
    (2, 3, "2 photos and 3 prompts do not pair up: give one photo (animated with each prompt), one prompt"),
    (0, 1, "a batch needs a photo and a prompt; got 0 photos and 1 prompt"),
])
def test_counts_that_do_not_pair_up_are_refused(photos, prompts, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", "\\(").replace(")", "\\)")):
        pair_photos_and_prompts(photos, prompts)


def test_a_text_holds_one_prompt_a_line_and_an_empty_text_is_the_empty_prompt():
    assert prompt_lines(" shaking head \n\n\tcamera zooms in\r\n") == ["shaking head", "camera zooms in"]
    assert prompt_lines("") == prompt_lines(" \n ") == [""]


def test_a_rows_name_keeps_its_place_and_photo_and_changes_with_what_makes_its_video():
    row = BatchRow(3, Path("shots/beach.png"), "waves roll in", None, None, "video 3")
    name = row_output_name(row, "4", 7, {"steps": 25}, ".webp")
    assert name.startswith("0003-beach-") and name.endswith(".webp")
    assert row_output_name(row, "4", 7, {"steps": 25}, ".webp") == name
    others = {row_output_name(row, "5", 7, {"steps": 25}, ".webp"), row_output_name(row, "4", 8, {"steps": 25}, ".webp"),
              row_output_name(row, "4", 7, {"steps": 30}, ".webp"),
              row_output_name(BatchRow(3, row.photo, "waves roll out", None, None, ""), "4", 7, {"steps": 25}, ".webp")}
    assert name not in others and len(others) == 4
