"""A CLIP tokenizer over a small word list, for models trained from scratch (the toy-world demo).

It is a real CLIP BPE tokenizer (same byte-level alphabet, special tokens and pre-tokenisation),
whose merges spell out each listed word as one token; any other text falls back to characters.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..loading.tokenizer import bytes_to_unicode

START, END = "<|startoftext|>", "<|endoftext|>"


def word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build `word</w>` from its byte characters."""
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    merges, current = [], symbols[0]
    for symbol in symbols[1:]:
        merges.append((current, symbol))
        current += symbol
    return merges


def write_word_tokenizer(folder: str | Path, words: list[str]) -> Path:
    """Write vocab.json + merges.txt (+ the tokenizer configs) for CLIPTokenizer.from_pretrained."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in sorted({w.lower() for w in words}):
        for merge in word_merges(word):
            if merge not in merges:
                merges.append(merge)
    vocab_tokens += ["".join(m) for m in merges if "".join(m) not in vocab_tokens]
    vocab_tokens += [START, END]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "bos_token": START, "eos_token": END, "pad_token": END,
                    "unk_token": END, "tokenizer_class": "CLIPTokenizer"}),
        encoding="utf-8",
    )
    return folder
