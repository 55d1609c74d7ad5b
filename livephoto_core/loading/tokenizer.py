"""The CLIP tokenizer of SD-1.5, from a local folder or from the BPE file open-clip-torch ships.

No hub: SD-1.5's tokenizer is CLIP's byte-level BPE, and open-clip-torch carries the original
``bpe_simple_vocab_16e6.txt.gz``. From it we build the ``vocab.json``/``merges.txt`` pair exactly as
CLIP's SimpleTokenizer builds its vocabulary, so the token ids are SD-1.5's (49408 entries).
"""

import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from ..defaults import CLIP_CONTEXT
from ..errors import ModelFileError
from .schema import MAX_JSON_FILE_BYTES, Field, Int, Object, Schema, Spec, Mismatch, read_json_object

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
_FIX = "replace the tokenizer's files"
_MAX_TOKEN_ID = 2**31 - 1  # the tokenizers library keeps ids as u32; embeddings index them as int32
# CLIP's SimpleTokenizer keeps merges 1 .. 49152-256-2: 49408 ids = 2*256 bytes + merges + 2 specials.
_NUM_MERGES = 49152 - 256 - 2


def load_clip_tokenizer(path: str | os.PathLike | None = None):
    """A ``transformers.CLIPTokenizer`` with SD-1.5's ids (start 49406, end and padding 49407).

    ``path`` is a folder holding vocab.json + merges.txt (a diffusers ``tokenizer/``, ComfyUI's
    ``comfy/sd1_tokenizer``) or a diffusers model folder with a ``tokenizer/`` inside. Without a path,
    the vocabulary comes from an installed open-clip-torch, found without importing it.
    """
    if path is not None:
        folder = Path(path)
        if (folder / "tokenizer" / "vocab.json").is_file():
            folder = folder / "tokenizer"
        if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
            raise ModelFileError(
                f"{folder} has no vocab.json and merges.txt; pass a CLIP tokenizer folder "
                "(a diffusers SD-1.5 folder's tokenizer/ or ComfyUI's comfy/sd1_tokenizer)"
            )
        return _tokenizer_from_folder(folder)

    bpe_path = _find_open_clip_bpe()
    if bpe_path is None:
        raise ModelFileError(
            "no CLIP tokenizer found; use a diffusers SD-1.5 folder (it has tokenizer/), pass --tokenizer DIR "
            "with vocab.json and merges.txt, or run `pip install --no-deps open-clip-torch` for its vocabulary"
        )
    return _tokenizer_from_folder(_build_from_bpe(bpe_path))


class _TokenText(Spec):
    """A special token as tokenizer_config.json names it: its text, or an AddedToken object with a "content"."""

    expected = 'text, or an object whose "content" is text'

    def check(self, value):
        content = value.get("content") if isinstance(value, dict) else value
        if not isinstance(content, str) or not content:
            raise Mismatch(value, self.expected)
        return content


TOKENIZER_CONFIG = Schema("the tokenizer config", {
    # transformers writes 10**30 for "no limit"; LivePhoto itself always tokenizes to CLIP_CONTEXT.
    "model_max_length": Int(1, 2**128),
    "bos_token": Field(_TokenText(), default=START_TOKEN),
    "eos_token": Field(_TokenText(), default=END_TOKEN),
    "pad_token": _TokenText(),
    "unk_token": _TokenText(),
    "added_tokens_decoder": Object(),
}, fix=_FIX)


def check_tokenizer_files(folder: Path) -> None:
    """Refuse a malformed vocab.json, merges.txt or tokenizer_config.json, naming the file and the entry,
    before transformers reads them (it fails on them with errors of its own, or later, at the first prompt).

    vocab.json maps each token to a distinct id from 0 to 2**31 - 1 and holds the special tokens; each line
    of merges.txt after its ``#version`` header is two tokens of the vocabulary whose join is one too.
    """
    config_file = folder / "tokenizer_config.json"
    values = read_json_object(config_file, _FIX) if config_file.is_file() else {}
    config = TOKENIZER_CONFIG.check(values, str(config_file))
    vocab_file = folder / "vocab.json"
    vocab = read_json_object(vocab_file, _FIX)
    seen: dict[int, str] = {}
    for token, index in vocab.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= _MAX_TOKEN_ID:
            raise ModelFileError(
                f"{vocab_file}: token {token!r} has id {json.dumps(index)[:40]}; a vocabulary maps each token to a "
                f"whole number from 0 to {_MAX_TOKEN_ID}; {_FIX}"
            )
        if index in seen:
            raise ModelFileError(f"{vocab_file}: tokens {seen[index]!r} and {token!r} share the id {index}; {_FIX}")
        seen[index] = token
    for role in ("bos_token", "eos_token"):
        if config[role] not in vocab:
            raise ModelFileError(f"{vocab_file} lacks the special token {config[role]!r} ({role}); {_FIX}")

    merges_file = folder / "merges.txt"
    if merges_file.stat().st_size > MAX_JSON_FILE_BYTES:
        raise ModelFileError(f"{merges_file} is larger than any real merges file; {_FIX}")
    try:
        lines = merges_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{merges_file} cannot be read as UTF-8 text ({type(error).__name__}); {_FIX}") from None
    for number, line in enumerate(lines, 1):
        if not line or number == 1 and line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or not all(part in vocab for part in pair) or "".join(pair) not in vocab:
            raise ModelFileError(
                f"{merges_file} line {number} is {line[:60]!r}; each merge is two tokens of vocab.json, separated "
                f"by one space, whose join is a token too; {_FIX}"
            )


def _tokenizer_from_folder(folder: Path):
    from transformers import CLIPTokenizer

    check_tokenizer_files(folder)
    # A bare vocab.json + merges.txt has no tokenizer_config.json to set CLIP's 77-token window.
    defaults = {} if (folder / "tokenizer_config.json").is_file() else {"model_max_length": CLIP_CONTEXT}
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True, **defaults)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise ModelFileError(f"the tokenizer in {folder} cannot be read ({error}); replace its files") from None


def _find_open_clip_bpe() -> Path | None:
    # find_spec locates the package without running its __init__ (which would import torchvision).
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """Token -> id map and merge list from the text of CLIP's BPE file (SimpleTokenizer's construction)."""
    merges = [line for line in bpe_text.split("\n")[1:] if line][:_NUM_MERGES]
    merge_pairs = [tuple(merge.split()) for merge in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [token + "</w>" for token in vocab]
    vocab += ["".join(pair) for pair in merge_pairs]
    vocab += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(vocab)}, [" ".join(pair) for pair in merge_pairs]


def _cache_root() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "livephoto"
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:
        return Path(tempfile.gettempdir()) / "livephoto"


def _build_from_bpe(bpe_path: Path) -> Path:
    """vocab.json + merges.txt built from a BPE .txt.gz, cached under the file's SHA-256."""
    data = bpe_path.read_bytes()
    folder = _cache_root() / "clip_tokenizer" / hashlib.sha256(data).hexdigest()[:16]
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError):
        raise ModelFileError(f"{bpe_path} is not a readable CLIP BPE file; reinstall open-clip-torch") from None
    vocab, merges = clip_vocab_and_merges(text)
    folder.mkdir(parents=True, exist_ok=True)
    # Written under temporary names and renamed, so a concurrent reader never sees half a file.
    for name, content in (
        ("merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n"),
        ("vocab.json", json.dumps(vocab, ensure_ascii=False)),
    ):
        partial = folder / f"{name}.{os.getpid()}.tmp"
        partial.write_text(content, encoding="utf-8")
        os.replace(partial, folder / name)
    return folder
