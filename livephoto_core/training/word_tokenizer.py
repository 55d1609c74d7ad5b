"""A CLIP tokenizer over a small word list, for models trained from scratch (the toy-world demo).

It is a real CLIP BPE tokenizer (same byte-level alphabet, special tokens and pre-tokenisation),
whose merges spell out each listed word as one token; any other text falls back to characters.

BPE applies the lowest-ranked merge among all adjacent pairs of a word, so one word's merges can
fire inside another ("ar" from "star" splits "square" into squ+ar+e). The merge list is therefore
built to a fixed point: spell every word with the merges so far, and where a word still comes out
in several pieces, append merges that join exactly those pieces. An appended merge ranks last and
joins pieces no finished word still has, so it never splits a word that was already one token.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..loading.tokenizer import bytes_to_unicode

START, END = "<|startoftext|>", "<|endoftext|>"


def word_symbols(word: str) -> list[str]:
    """`word</w>` as CLIP's byte-level BPE starts it: one symbol per byte, the last marked as word end."""
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return symbols


def apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE as CLIPTokenizer runs it: repeatedly join the adjacent pair of lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        first, second = symbols[i], symbols[i + 1]
        joined, j = [], 0
        while j < len(symbols):  # every occurrence of the pair, left to right, as BPE does
            if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
                joined.append(first + second)
                j += 2
            else:
                joined.append(symbols[j])
                j += 1
        symbols = joined
    return symbols


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges under which every word of `words` is a single token (see the module docstring)."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    pending = sorted({w.lower() for w in words})
    while pending:
        for word in pending:
            pieces = apply_merges(word_symbols(word), ranks)
            current = pieces[0]
            for piece in pieces[1:]:  # join the leftover pieces left to right
                if (current, piece) not in ranks:
                    ranks[(current, piece)] = len(merges)
                    merges.append((current, piece))
                current += piece
        pending = [w for w in pending if len(apply_merges(word_symbols(w), ranks)) > 1]
    return merges


def write_word_tokenizer(folder: str | Path, words: list[str]) -> Path:
    """Write vocab.json + merges.txt (+ the tokenizer configs) for CLIPTokenizer.from_pretrained."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = word_merges(words)
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
