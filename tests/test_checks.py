"""The shared setting checks (livephoto_core.checks), as properties over every value a caller can pass.

The CLI, the Python API and the nodes all go through these, so what holds here holds for all three:
one integer type rule, finite bounded floats, UTF-8 text, a device torch can use.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from livephoto_core.checks import (
    MAX_CONTENT_SCALE,
    MAX_FPS,
    MAX_GUIDANCE,
    MIN_FPS,
    check_content_scale,
    check_device,
    check_fps,
    check_frames,
    check_guidance,
    check_prior_weights,
    check_seed,
    check_size,
    check_steps,
    check_text,
)
from livephoto_core.errors import InvalidInputError
from livephoto_core.intensity import validate_level

# No example database: the properties run the same from any checkout, and write nothing.
PROPERTY = settings(max_examples=300, deadline=None, database=None)

INTEGER_TYPES = [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]

# Each whole-number setting with a value it takes: (name, check, value).
WHOLE_SETTINGS = [
    ("seed", check_seed, 7),
    ("frames", check_frames, 4),
    ("steps", check_steps, 20),
    ("intensity", validate_level, 5),
    ("height", lambda v: check_size(v, 64)[0], 64),
    ("width", lambda v: check_size(64, v)[1], 64),
]

# Each float setting with its range: (name, check, low, high).
FLOAT_SETTINGS = [
    ("guidance scale", check_guidance, 0.0, MAX_GUIDANCE),
    ("content scale", check_content_scale, 0.0, MAX_CONTENT_SCALE),
    ("inversion start", lambda v: check_prior_weights(v, 0.5)[0], 0.0, 1.0),
    ("inversion end", lambda v: check_prior_weights(0.5, v)[1], 0.0, 1.0),
    ("fps", check_fps, MIN_FPS, MAX_FPS),
]


@pytest.mark.parametrize("integer_type", INTEGER_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("name, check, value", WHOLE_SETTINGS, ids=[s[0] for s in WHOLE_SETTINGS])
def test_every_whole_setting_takes_python_and_numpy_integers_alike(name, check, value, integer_type):
    checked = check(integer_type(value))
    assert checked == value and type(checked) is int


@pytest.mark.parametrize("flag", [True, False, np.True_, np.False_], ids=repr)
@pytest.mark.parametrize("name, check, value", WHOLE_SETTINGS, ids=[s[0] for s in WHOLE_SETTINGS])
def test_no_whole_setting_takes_a_bool(name, check, value, flag):
    with pytest.raises(InvalidInputError, match=name):
        check(flag)


@PROPERTY
@given(value=st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                       st.integers(min_value=-(2**63), max_value=2**63 - 1).map(np.int64), st.none(), st.text()))
def test_whole_settings_return_an_int_in_range_or_refuse_in_one_line(value):
    """Any value (huge ints, NaN, inf, text, None): an int, or InvalidInputError naming the setting; nothing else."""
    for name, check, _ in WHOLE_SETTINGS:
        try:
            checked = check(value)
        except InvalidInputError as error:
            assert name in str(error) and "\n" not in str(error)
        else:
            assert type(checked) is int and checked == value


@PROPERTY
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.booleans(),
                       st.floats(width=32).map(np.float32)))
def test_float_settings_are_finite_and_bounded_or_refused(value):
    for name, check, low, high in FLOAT_SETTINGS:
        try:
            checked = check(value)
        except InvalidInputError as error:
            assert str(error).startswith(name) and "\n" not in str(error)
        else:
            assert type(checked) is float and math.isfinite(checked) and low <= checked <= high


@pytest.mark.parametrize("value", [MAX_GUIDANCE + 0.1, 1e6, 10**400, float("inf"), float("nan")])
def test_guidance_has_a_finite_upper_bound(value):
    with pytest.raises(InvalidInputError, match="guidance scale must be (from 0 to 100|a finite number)"):
        check_guidance(value)


@PROPERTY
@given(st.text())
def test_any_text_that_utf8_encodes_is_taken_as_it_is(text):
    assert check_text(text) is text


@PROPERTY
@given(prefix=st.text(max_size=5), byte=st.integers(0x80, 0xFF))
def test_bytes_that_are_not_utf8_are_refused_naming_the_byte(prefix, byte):
    """What sys.argv holds for a prompt typed in a Latin-1 shell: the byte as a lone surrogate."""
    prompt = prefix + bytes([byte]).decode("utf-8", "surrogateescape")
    with pytest.raises(InvalidInputError) as caught:
        check_text(prompt, "negative prompt")
    message = str(caught.value)
    assert message.startswith("the negative prompt holds the byte") and f"0x{byte:02x}" in message
    assert "pass UTF-8 text" in message and message.isascii()


def test_a_lone_surrogate_and_text_that_is_not_a_string_are_refused():
    with pytest.raises(InvalidInputError, match=r"the prompt holds a lone surrogate U\+D800.*pass UTF-8 text"):
        check_text("move \ud800 left")
    with pytest.raises(InvalidInputError, match="the prompt must be text; got bytes"):
        check_text(b"move left")


def test_the_cpu_is_a_device_and_unknown_ones_are_refused():
    assert check_device("cpu") == torch.device("cpu")
    for device in ("gpu", "cuda:-1", "xla"):
        with pytest.raises(InvalidInputError, match="cpu, cuda, cuda:N or mps"):
            check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has a GPU")
def test_cuda_without_cuda_is_refused_saying_so():
    expected = "CUDA is not available in this torch build" if torch.version.cuda is None else "sees no GPU"
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(InvalidInputError, match=expected):
            check_device(device)
