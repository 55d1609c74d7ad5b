"""Declared schemas for the configs LivePhoto reads from users' files, checked when the file is read.

Every JSON text that comes from a user's file (a safetensors header, a config embedded in its metadata, a
model folder's ``config.json``, a tokenizer's ``vocab.json``) is parsed by ``parse_json``, which refuses
nesting deeper than ``MAX_JSON_DEPTH`` before ``json.loads`` can recurse into it. Every config is then
checked by a ``Schema``: each field LivePhoto or the library it hands the config to relies on is declared
with its type and range, and ``Schema.check`` returns those fields only, so a reader cannot use a field
that nobody checked. Fields that upstream formats carry and we never read (diffusers configs have dozens)
are tolerated, unless the schema is our own format's (``extra="refuse"``).

A field of the wrong type or out of range is a ``ModelFileError`` naming the file, the field, what was
found, what was expected and the fix, raised before any model is built from it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFileError

# Real configs nest 3 or 4 levels (a safetensors header: object > tensor > shape list); a LivePhoto config's
# free-form `extra` holds the training recipe, about 5. 64 leaves room for any honest file and stays far
# below the ~1000 frames of Python's recursion limit, which json.loads would otherwise hit.
MAX_JSON_DEPTH = 64
# The largest JSON file we read is CLIP's vocab.json (1.6 MB); 64 MiB is far beyond any real config and
# still small enough to read into memory at once.
MAX_JSON_FILE_BYTES = 64 * 2**20

# A string (escapes included), an opening or a closing bracket: what the depth scan must see, in order.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', re.DOTALL)


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays/objects inside each other (brackets in strings do
    not count). One linear scan, no recursion, so it is safe on any input."""
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        elif bracket in "]}":
            depth -= 1
    return False


def parse_json(text: str | bytes, source: str, fix: str = "download it again", error=ModelFileError) -> Any:
    """The value of a JSON text from a user's file, or ``error`` naming ``source`` (the file, or the file
    and the place in it) and ``fix``. Deep nesting is refused before parsing; numbers too long for Python's
    int conversion (over 4300 digits) are refused as invalid JSON."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{source} is not valid JSON (not UTF-8 text); {fix}") from None
    if json_depth_exceeds(text):
        raise error(f"{source} nests arrays or objects more than {MAX_JSON_DEPTH} deep, as no real file does; {fix}")
    try:
        return json.loads(text)
    except ValueError as reason:  # JSONDecodeError, and the digit limit of int("...")
        raise error(f"{source} is not valid JSON ({str(reason).splitlines()[0][:120]}); {fix}") from None


def read_json_object(path: str | os.PathLike, fix: str = "download it again") -> dict[str, Any]:
    """A JSON file of a model folder that must hold an object, read with the size and depth limits."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_FILE_BYTES:
            raise ModelFileError(
                f"{path} is {size / 2**20:.0f} MiB, far larger than any config ({MAX_JSON_FILE_BYTES // 2**20} MiB "
                f"at most); {fix}"
            )
        data = path.read_bytes()
    except OSError as reason:
        raise ModelFileError(f"{path} cannot be read ({reason.strerror or type(reason).__name__}); {fix}") from None
    values = parse_json(data, str(path), fix)
    if not isinstance(values, dict):
        raise ModelFileError(f"{path} does not hold a JSON object but {_found(values)}; {fix}")
    return values


# --- field declarations ----------------------------------------------------------------------------


class Mismatch(Exception):
    """A value that does not fit its declaration: ``place`` inside the field ("[2]"), ``found``, ``expected``."""

    def __init__(self, found: Any, expected: str, place: str = ""):
        super().__init__(expected)
        self.found, self.expected, self.place = found, expected, place


def _found(value: Any) -> str:
    """A short description of a JSON value for a message: its text (cut) and, for containers, its type."""
    text = json.dumps(value, ensure_ascii=False)  # JSON's spelling: true, null, "text", NaN
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = {list: "a list", dict: "an object"}.get(type(value))
    return f"{text} ({kind})" if kind else text


class Spec:
    """What one field may hold. ``check`` returns the value (normalised: floats as float) or raises Mismatch."""

    expected = "a value"

    def check(self, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Spec):
    """A whole number (never true/false) from ``low`` to ``high``; huge numbers are compared exactly."""

    low: int
    high: int

    @property
    def expected(self) -> str:
        return f"a whole number from {self.low} to {self.high}"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise Mismatch(value, self.expected)
        return value


@dataclass(frozen=True)
class Number(Spec):
    """A finite number from ``low`` to ``high`` (bounds included unless ``open_low``)."""

    low: float
    high: float
    open_low: bool = False

    @property
    def expected(self) -> str:
        above = f"above {self.low:g}" if self.open_low else f"from {self.low:g}"
        return f"a finite number {above} to {self.high:g}"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Mismatch(value, self.expected)
        # Compared before float(): an int of 400 digits would overflow it.
        if not self.low <= value <= self.high or self.open_low and value == self.low:  # NaN fails the first
            raise Mismatch(value, self.expected)
        return float(value)


@dataclass(frozen=True)
class Bool(Spec):
    expected = "true or false"

    def check(self, value):
        if not isinstance(value, bool):
            raise Mismatch(value, self.expected)
        return value


@dataclass(frozen=True)
class Str(Spec):
    """Text, one of ``choices`` when they are given, at most ``max_length`` characters."""

    choices: tuple[str, ...] = ()
    max_length: int = 4096

    @property
    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        return f"text of at most {self.max_length} characters"

    def check(self, value):
        if not isinstance(value, str) or len(value) > self.max_length or self.choices and value not in self.choices:
            raise Mismatch(value, self.expected)
        return value


@dataclass(frozen=True)
class List(Spec):
    """A list of ``min_length`` to ``max_length`` items, each fitting ``item``."""

    item: Spec
    min_length: int = 0
    max_length: int = 64

    @property
    def expected(self) -> str:
        count = self.min_length if self.min_length == self.max_length else f"{self.min_length} to {self.max_length}"
        return f"a list of {count} items, each {self.item.expected}"

    def check(self, value):
        if not isinstance(value, list) or not self.min_length <= len(value) <= self.max_length:
            raise Mismatch(value, self.expected)
        checked = []
        for index, item in enumerate(value):
            try:
                checked.append(self.item.check(item))
            except Mismatch as inner:
                raise Mismatch(inner.found, inner.expected, f"[{index}]{inner.place}") from None
        return checked


@dataclass(frozen=True)
class Object(Spec):
    """A JSON object of any content (free-form provenance); its depth is bounded by ``parse_json``."""

    expected = "an object"

    def check(self, value):
        if not isinstance(value, dict):
            raise Mismatch(value, self.expected)
        return value


@dataclass(frozen=True)
class Either(Spec):
    """The first of ``options`` that fits (diffusers configs hold some sizes as a number or a list per block)."""

    options: tuple[Spec, ...]

    @property
    def expected(self) -> str:
        return " or ".join(option.expected for option in self.options)

    def check(self, value):
        for option in self.options:
            try:
                return option.check(value)
            except Mismatch:
                continue
        raise Mismatch(value, self.expected)


@dataclass(frozen=True)
class Null(Spec):
    expected = "null"

    def check(self, value):
        if value is not None:
            raise Mismatch(value, self.expected)
        return None


def optional(spec: Spec) -> Spec:
    """``spec`` or null."""
    return Either((Null(), spec))


_ABSENT = object()


@dataclass(frozen=True)
class Field:
    """A declared field: its ``spec``; ``required``, or else the ``default`` a reader gets when it is absent
    (no default: the field is left out of the result, for configs handed on to a library with its own)."""

    spec: Spec
    required: bool = False
    default: Any = _ABSENT


class Schema:
    """The declared fields of one kind of config (``what``: "the UNet config", ...).

    ``check`` refuses a value that is not an object, a missing required field, a field that does not fit its
    declaration, with ``extra="refuse"`` an undeclared field, and then whatever ``rules`` (the rules between
    fields, given the checked fields) report as problems; ``fix`` ends every message.
    """

    def __init__(self, what: str, fields: Mapping[str, Field | Spec], fix: str = "download it again",
                 extra: str = "ignore", rules: Callable[[dict[str, Any]], Iterable[str]] | None = None):
        assert extra in ("ignore", "refuse")
        self.what, self.fix, self.extra, self.rules = what, fix, extra, rules
        self.fields = {name: f if isinstance(f, Field) else Field(f) for name, f in fields.items()}

    def check(self, values: Any, source: str) -> dict[str, Any]:
        """The declared fields of ``values`` (defaults filled in), checked; ``source`` names the file."""
        if not isinstance(values, dict):
            raise ModelFileError(f"{source}: {self.what} is {_found(values)}, not a JSON object; {self.fix}")
        if self.extra == "refuse":
            unknown = sorted(set(values) - set(self.fields))
            if unknown:
                raise ModelFileError(
                    f"{source}: {self.what} has unknown fields {unknown[:5]}; is it from a newer livephoto?"
                )
        checked = {}
        for name, declared in self.fields.items():
            if name not in values:
                if declared.required:
                    raise ModelFileError(f"{source}: {self.what} lacks the field {name!r}; {self.fix}")
                if declared.default is not _ABSENT:
                    checked[name] = declared.default
                continue
            try:
                checked[name] = declared.spec.check(values[name])
            except Mismatch as mismatch:
                raise ModelFileError(
                    f"{source}: {self.what} field {name + mismatch.place!r} is {_found(mismatch.found)}; expected "
                    f"{mismatch.expected}; {self.fix}"
                ) from None
        for problem in self.rules(checked) if self.rules else ():
            raise ModelFileError(f"{source}: {self.what}: {problem}; {self.fix}")
        return checked


# --- tensor shapes ---------------------------------------------------------------------------------


def expect_shape(shapes: Mapping[str, tuple[int, ...]], key: str, rank: int) -> tuple[int, ...]:
    """The shape of tensor ``key``, which detection is about to index: it must have ``rank`` dimensions, none
    of them 0 (a weight with no elements belongs to no model), else the file is refused as damaged."""
    shape = tuple(shapes[key])
    if len(shape) != rank or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ModelFileError(
            f"tensor {key!r} has shape {list(shape)}, where every model that has it stores {rank} dimensions, none "
            f"0; the file is damaged or not what its tensor names say"
        )
    return shape

