"""The CLIP tokenizer: built from a CLIP BPE file like CLIP's SimpleTokenizer, or read from a folder."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import regex
from livephoto_core.testing.ldm_layout import synthetic_clip_bpe

from livephoto_core.errors import ModelFileError
from livephoto_core.loading import tokenizer as tokenizer_module
from livephoto_core.loading.tokenizer import bytes_to_unicode, load_clip_tokenizer

WORDS = ["a", "photo", "of", "cat", "the", "dog", "runs", "left"]


class SimpleTokenizer:
    """Reference: OpenAI CLIP's simple_tokenizer.py algorithm, straight from the BPE text.

    Without its ftfy/html.unescape clean-up, which Hugging Face's CLIPTokenizer (what diffusers' SD-1.5
    uses, hence SD-1.5's ids in practice) does not do either.
    """

    def __init__(self, bpe_text: str):
        merges = [tuple(line.split()) for line in bpe_text.split("\n")[1:] if line][: 49152 - 256 - 2]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = (
            vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        )
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.ranks = dict(zip(merges, range(len(merges))))
        self.pattern = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text):
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in regex.findall(self.pattern, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token))
        return [self.encoder["<|startoftext|>"], *ids, self.encoder["<|endoftext|>"]]


def _fake_open_clip(root: Path, bpe_text: str) -> Path:
    """A package named open_clip holding only the BPE file; importing it would fail loudly."""
    package = root / "open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('open_clip must be located, never imported')\n")
    (package / "bpe_simple_vocab_16e6.txt.gz").write_bytes(gzip.compress(bpe_text.encode()))
    return root


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def synthetic_open_clip(tmp_path, monkeypatch, isolated_cache):
    text = synthetic_clip_bpe(WORDS)
    monkeypatch.syspath_prepend(str(_fake_open_clip(tmp_path / "site", text)))
    importlib.invalidate_caches()
    return text


PROMPTS = ["a photo of a cat", "The dog runs LEFT!!", "a  cat,of   the dog", "zebra 42 runs", "café & dog"]


def test_synthetic_vocabulary_matches_simple_tokenizer(synthetic_open_clip):
    tokenizer = load_clip_tokenizer()
    assert "open_clip" not in sys.modules
    reference = SimpleTokenizer(synthetic_open_clip)
    assert tokenizer.get_vocab() == reference.encoder
    for prompt in PROMPTS[:4]:
        assert tokenizer(prompt).input_ids == reference.encode(prompt), prompt
    padded = tokenizer(
        PROMPTS[0], padding="max_length", max_length=tokenizer.model_max_length, truncation=True
    ).input_ids
    end = reference.encoder["<|endoftext|>"]
    assert tokenizer.model_max_length == 77 and len(padded) == 77
    assert padded == reference.encode(PROMPTS[0]) + [end] * (77 - len(reference.encode(PROMPTS[0])))


def test_built_files_are_cached(synthetic_open_clip, isolated_cache):
    load_clip_tokenizer()
    built = list(isolated_cache.glob("livephoto/clip_tokenizer/*/vocab.json"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    load_clip_tokenizer()
    assert built[0].stat().st_mtime_ns == stamp


def test_folder_with_vocab_and_merges(tmp_path, synthetic_open_clip):
    reference = SimpleTokenizer(synthetic_open_clip)
    folder = tmp_path / "sd1_tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(reference.encoder), encoding="utf-8")
    merges = [line for line in synthetic_open_clip.split("\n")[1:] if line]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = load_clip_tokenizer(folder)
    assert tokenizer.model_max_length == 77
    assert tokenizer(PROMPTS[1]).input_ids == reference.encode(PROMPTS[1])
    # A diffusers model folder is accepted too: its tokenizer/ is used.
    model = tmp_path / "model"
    model.mkdir()
    folder.rename(model / "tokenizer")
    assert load_clip_tokenizer(model)(PROMPTS[0]).input_ids == reference.encode(PROMPTS[0])


def test_folder_without_vocabulary(tmp_path):
    with pytest.raises(ModelFileError, match="has no vocab.json and merges.txt; pass a CLIP tokenizer folder"):
        load_clip_tokenizer(tmp_path)


def test_nothing_installed(monkeypatch):
    monkeypatch.setattr(tokenizer_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ModelFileError,
        match=r"no CLIP tokenizer found; .*tokenizer/.*--tokenizer DIR.*pip install --no-deps open-clip-torch",
    ):
        load_clip_tokenizer()


def _installed_bpe():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


@pytest.mark.skipif(_installed_bpe() is None, reason="open-clip-torch's BPE vocabulary is not installed")
def test_real_clip_vocabulary(isolated_cache):
    tokenizer = load_clip_tokenizer()
    reference = SimpleTokenizer(gzip.decompress(_installed_bpe().read_bytes()).decode())
    vocab = tokenizer.get_vocab()
    assert len(vocab) == 49408 and vocab == reference.encoder
    expected = [
        vocab[t] for t in ("<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>")
    ]
    assert expected == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a photo of a cat").input_ids == expected
    for prompt in PROMPTS:
        assert tokenizer(prompt).input_ids == reference.encode(prompt), prompt
