"""What a model trained from scratch can read: its word list, and the notes a user needs about a prompt.

A from-scratch model (the bundled demo) has a tokenizer over a small word list and a text encoder
that has only ever seen those words; anything else reaches it as byte pieces ("w", "o", "ma", "n")
with untrained embeddings. Its export carries a one-line card (what it knows, where real models
come from) in the LivePhoto config's ``extra``, and every render names the prompt's words outside
its vocabulary, so a user who types "the woman turns her head" learns why nothing sensible happens.
"""

from __future__ import annotations

import re

# CLIP's pre-tokenisation, lower-cased: letter runs, single digits, runs of other non-space characters.
WORD_PATTERN = re.compile(r"[^\W\d_]+|\d|[^\s\w]+")
MOTION_WORDS = ("left", "right", "up", "down", "zoom", "in", "out", "rotates", "spins", "still")


def model_card(words: list[str]) -> str:
    """The card of a model trained from scratch on the toy world with this word list."""
    motions = [w for w in MOTION_WORDS if w in words]
    return (
        f"this is a miniature trained from scratch on a toy world of coloured shapes on plain backgrounds "
        f"({len(words)} words; motions: {', '.join(motions)}); it does not know real photos: for those, train "
        f"LivePhoto on your SD-1.5 model with scripts/train.py (docs/training.md)"
    )


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The prompt's words (in order, once each) that the tokenizer has no single token for."""
    words = dict.fromkeys(w for w in WORD_PATTERN.findall(prompt.lower()) if w.isalpha())
    return [w for w in words if len(tokenizer.tokenize(w)) != 1]


def prompt_notes(extra: dict, tokenizer, prompt: str) -> list[str]:
    """Notes for a render of `prompt` by a model whose LivePhoto config has `extra`: its card and the
    prompt's unknown words, for models that carry a card (from-scratch ones); none for the others."""
    card = extra.get("card")
    if not card:
        return []
    notes = [f"model: {card}"]
    unknown = unknown_words(tokenizer, prompt)
    if unknown:
        notes.append(f"words this model has never seen (it reads them as noise): {', '.join(unknown)}")
    return notes
