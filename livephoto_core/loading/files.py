"""Reading weight files safely (safetensors, or PyTorch pickles through ``weights_only`` only),
hashing them, and handing their tensors to a model.

Every failure a user can cause (a missing, truncated, corrupt or unsafe file) becomes a one-line
``ModelFileError`` that names the file and the fix; no raw torch or JSON traceback reaches the user.
"""

from __future__ import annotations

import hashlib
import os
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelFileError
from ..fileio import check_input_path
from .schema import parse_json

if TYPE_CHECKING:  # torch is imported where tensors are read, so header-only inspection stays fast
    import torch

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# Bytes per element of each safetensors dtype (the format's own names).
_SAFETENSORS_ITEM_SIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "C64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2": 1,
    "F8_E5M2FNUZ": 1,
}
# A real header is a few hundred KiB at most; anything far larger is a corrupt length field.
_MAX_SAFETENSORS_HEADER = 100 * 2**20

# Module prefixes of the globals a tensor pickle legitimately references.
_DATA_GLOBAL_PREFIXES = ("torch.", "collections.", "_codecs.", "numpy.")


def _corrupt(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path.name} is truncated or corrupt ({why}); download it again")


def check_weight_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path after checking it is a non-empty file with a weights suffix."""
    path = check_input_path(path, "a weights file (.safetensors, .ckpt, .pt, .pth, .bin)", ModelFileError)
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path.name} is empty (0 bytes); download it again")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelFileError(
            f"{path.name} is not a weights file LivePhoto reads; pass a .safetensors (or .ckpt/.pt/.pth/.bin) file"
        )
    return path


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes of every tensor and the metadata of a .safetensors file, read from its header only.

    The header is validated against the file's size the way the safetensors library does (tensors
    contiguous, sizes matching their dtype and shape, data ending exactly at the end of the file), so
    a truncated download is caught here rather than as a raw error halfway through loading. Its size is
    limited (``_MAX_SAFETENSORS_HEADER``) and so is the nesting of its JSON (``schema.MAX_JSON_DEPTH``).
    """
    path = check_weight_file(path)
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"only {file_size} bytes")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > file_size - 8:
            raise _corrupt(path, f"header claims {header_size} bytes but the file has {file_size}")
        if header_size > _MAX_SAFETENSORS_HEADER:
            raise _corrupt(path, f"header claims {header_size} bytes, more than the {_MAX_SAFETENSORS_HEADER // 2**20} "
                                 f"MiB LivePhoto reads")
        raw_header = file.read(header_size)
    header = parse_json(raw_header, f"the header of {path.name}", "the file is truncated or corrupt: download it again")
    if not isinstance(header, dict):
        raise _corrupt(path, "the header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "the metadata is not a string-to-string map")

    shapes, extents = {}, []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            numbers = (*shape, begin, end)
            if not isinstance(dtype, str) or not all(type(n) is int and n >= 0 for n in numbers):  # not bool
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"the header entry of {name!r} is malformed") from None
        if dtype not in _SAFETENSORS_ITEM_SIZE:
            raise ModelFileError(f"{path.name} stores {name!r} as {dtype}, a tensor type LivePhoto cannot load")
        numel = 1
        for n in shape:
            numel *= n
        if end - begin != numel * _SAFETENSORS_ITEM_SIZE[dtype]:
            raise _corrupt(path, f"the header gives {name!r} a size that does not match its shape")
        shapes[name] = tuple(shape)
        extents.append((begin, end))

    position = 0
    for begin, end in sorted(extents):
        if begin != position:
            raise _corrupt(path, "the header's tensor offsets overlap or leave gaps")
        position = end
    if 8 + header_size + position != file_size:
        raise _corrupt(path, f"the header describes {8 + header_size + position} bytes but the file has {file_size}")
    return shapes, metadata


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` map of a .safetensors file ({} if it has none), without reading tensors."""
    return read_safetensors_header(path)[1]


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weights file on the CPU, and its safetensors metadata ({} for pickles).

    A top-level ``state_dict`` entry (usual in .ckpt files) is unwrapped and non-tensor entries
    (``global_step`` and the like) are dropped.
    """
    path = check_weight_file(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        _, metadata = read_safetensors_header(path)
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu"), metadata
        except Exception as error:  # the header was fine, so this is damage inside the data
            raise _corrupt(path, str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    return _load_torch_pickle(path), {}


# A checkpoint's pickle holds only its structure (names, shapes, storage keys: about 100 KB for SD-1.5's 1,100
# tensors), the tensors lie beside it: no real pickle comes near this, and reading one stops here. The same
# bound caps how much a zip checkpoint's members may inflate beyond their stored size (PyTorch stores them
# uncompressed), so that a small file cannot unpack to gigabytes.
_MAX_PICKLE_BYTES = 64 * 2**20


def _load_torch_pickle(path: Path) -> dict[str, torch.Tensor]:
    import torch

    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_members(path)
    try:
        # mmap keeps a multi-GB .ckpt out of RAM until used; only the zip format supports it.
        with warnings.catch_warnings():  # torch's notes on pickle protocols mean nothing to a user
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        found = _pickled_globals(path, is_zip)
        code = [name for name in found if not name.startswith(_DATA_GLOBAL_PREFIXES)]
        if code:
            raise ModelFileError(
                f"{path.name} contains pickled code ({', '.join(dict.fromkeys(code[:3]))}), "
                "which LivePhoto never runs; convert it to .safetensors"
            ) from None
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        if "Weights only load failed" in reason:
            reason = "it holds objects other than tensors" if found else "it is not a PyTorch checkpoint"
        raise _corrupt(path, reason[:200]) from None

    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ModelFileError(f"{path.name} holds a {type(checkpoint).__name__}, not a state dict of tensors")
    tensors = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ModelFileError(f"{path.name} holds no tensors; pass the model's weights file")
    return tensors


def _check_zip_members(path: Path) -> None:
    """Refuse, from the zip's directory alone, a checkpoint whose pickle or members would inflate past
    _MAX_PICKLE_BYTES: torch.load reads the pickle member whole, at the size the directory declares (which
    is also as far as zipfile and torch's reader inflate a member)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise _corrupt(path, f"its zip directory cannot be read: {error}") from None
    limit = f"{_MAX_PICKLE_BYTES // 2**20} MiB"
    for member in members:
        if member.filename.endswith(".pkl") and member.file_size > _MAX_PICKLE_BYTES:
            raise ModelFileError(
                f"{path.name} is not a checkpoint LivePhoto reads: its pickle {member.filename} unpacks to "
                f"{member.file_size:,} bytes, and a checkpoint's pickle is far under {limit} (its tensors lie beside "
                f"it); pass the model's weights file, or convert it to .safetensors"
            )
    inflated = sum(member.file_size for member in members)
    stored = sum(member.compress_size for member in members)
    if inflated - stored > _MAX_PICKLE_BYTES:
        raise ModelFileError(
            f"{path.name} is not a checkpoint LivePhoto reads: its {stored:,} compressed bytes unpack to "
            f"{inflated:,} (PyTorch stores checkpoints uncompressed); pass the model's weights file, or convert it "
            f"to .safetensors"
        )


def _pickled_globals(path: Path, is_zip: bool) -> list[str]:
    """The ``module.name`` globals a pickle refers to, found by parsing its opcodes (never executing), as they
    stream from the file or zip member: at most _MAX_PICKLE_BYTES of each are read."""
    found = []
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith(".pkl"):
                        with archive.open(name) as member:
                            _scan_globals(_CappedReader(member, _MAX_PICKLE_BYTES), found)
        else:
            with open(path, "rb") as file:
                _scan_globals(_CappedReader(file, _MAX_PICKLE_BYTES), found)
    except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError):  # a damaged, or encrypted, zip
        pass  # keep what was found before
    return found


def _scan_globals(stream, found: list[str]) -> None:
    """Append to `found` the globals of the pickles in `stream`, up to the first damage (random bytes, a torn
    pickle, the end of the reader's allowance). A legacy torch file is several pickles back to back (then raw
    storage bytes); genops stops at each STOP with the stream just after it."""
    recent_strings = []
    try:
        while True:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(argument.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(recent_strings) >= 2:
                    found.append(".".join(recent_strings[-2:]))
                elif isinstance(argument, str):
                    recent_strings.append(argument)
    except Exception:  # genops raises ValueError, EOFError, UnicodeDecodeError... for what is not a pickle
        pass


class _CappedReader:
    """The read and readline that pickletools.genops needs, over a binary stream, refusing (ValueError) to
    return more than `limit` bytes in all. genops reads an opcode's argument whole, so a declared length is
    refused before anything of that size is read."""

    def __init__(self, stream, limit: int):
        self.stream, self.left = stream, limit

    def read(self, size: int) -> bytes:
        return self._taken(self.stream.read(self._allowed(size)), size)

    def readline(self) -> bytes:
        line = self.stream.readline(self.left + 1)
        return self._taken(line, len(line))

    def _allowed(self, size: int) -> int:
        if size < 0 or size > self.left:
            raise ValueError(f"a pickle of more than {_MAX_PICKLE_BYTES} bytes")
        return size

    def _taken(self, data: bytes, size: int) -> bytes:
        self._allowed(size)
        self.left -= len(data)
        return data


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached per (path, size, mtime) for this process."""
    path = Path(path).resolve()
    stat = path.stat()
    cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(16 * 2**20):
                digest.update(chunk)
        _HASH_CACHE[cache_key] = digest.hexdigest()
    return _HASH_CACHE[cache_key]


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, or for a model folder of its weight and config files.

    A folder's hash covers each file's relative path and SHA-256, so renaming or editing any weight
    or config file changes it while the folder's location does not.
    """
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*WEIGHT_SUFFIXES, ".json")]
    # Hidden folders (.cache/ of huggingface-cli downloads, .git/) hold bookkeeping, not the model.
    for file in sorted(f for f in files if not any(part.startswith(".") for part in f.relative_to(path).parts)):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def load_pretrained(cls, folder: Path, name: str, **kwargs):
    """``cls.from_pretrained`` on a local model folder, in eval mode, with the fp16 variant when it is the
    only one there. Whatever diffusers or transformers raise for a damaged folder becomes one line:
    "`name` cannot be loaded (why); download it again"."""
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    if weights and all(".fp16." in weight for weight in weights):
        kwargs["variant"] = "fp16"
    try:
        model = cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except Exception as error:  # their errors have no common base class
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{name} cannot be loaded ({reason[:200]}); download it again") from None
    return model.eval()


def build_model(
    make_model,
    state_dict: dict[str, torch.Tensor],
    dtype: torch.dtype,
    what: str,
    computed_buffers: tuple[str, ...] = (),
):
    """``make_model()`` built without initialising its weights, then given ``state_dict``, which must fit exactly.

    Keys ending in one of ``computed_buffers`` may be absent: the model computes those buffers itself.
    Missing, unexpected or wrongly shaped weights raise ModelFileError naming a few of them.
    """
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device: no time spent on random init
        model = make_model()
    expected = set(model.state_dict())
    given = {key for key, value in state_dict.items() if value is not None}
    missing = sorted(key for key in expected - given if not (computed_buffers and key.endswith(computed_buffers)))
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"] if unexpected else []
        raise ModelFileError(f"{what} does not fit the model it claims to be: {'; '.join(parts)} weights")
    try:
        model.load_state_dict({key: state_dict[key] for key in expected & given}, strict=False, assign=True)
    except RuntimeError as error:
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error)[:200])
        raise ModelFileError(f"{what} does not fit the model it claims to be ({detail})") from None
    # torch's own .to, not diffusers' override, which warns about any dtype cast; it also casts the
    # computed buffers, which the state dict did not bring.
    return torch.nn.Module.to(model, dtype).eval()
