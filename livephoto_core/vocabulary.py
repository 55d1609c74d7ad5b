"""What a model trained from scratch can read: its word list, and the notes a user needs about a prompt.

A from-scratch model (a "bundled" base, like the demo) has a tokenizer over a small word list and a
text encoder that has only ever seen those words; anything else reaches it as byte pieces ("w",
"o", "ma", "n") with untrained embeddings. Every render by such a model notes what it knows (its
motion words, read off its own tokenizer) and where real models come from, and names the prompt's
words outside its vocabulary, so a user who types "the woman turns her head" learns why nothing
sensible happens.
"""

from __future__ import annotations

import re

# CLIP's pre-tokenisation, lower-cased: letter runs, single digits, runs of other non-space characters.
WORD_PATTERN = re.compile(r"[^\W\d_]+|\d|[^\s\w]+")
MOTION_WORDS = ("left", "right", "up", "down", "zoom", "in", "out", "rotates", "spins", "still")


def known_words(tokenizer) -> list[str]:
    """The whole words the tokenizer has one token for (BPE marks a word's last piece with </w>)."""
    candidates = (token.removesuffix("</w>") for token in tokenizer.get_vocab() if token.endswith("</w>"))
    return sorted(w for w in candidates if len(w) > 1 and w.isalpha() and len(tokenizer.tokenize(w)) == 1)


def model_card(words: list[str]) -> str:
    """What a from-scratch toy-world model knows, given its word list."""
    motions = [w for w in MOTION_WORDS if w in words]
    return (
        f"a miniature trained from scratch on a toy world of coloured shapes (motion words: {', '.join(motions)}); "
        f"it does not know real photos: for those, train LivePhoto on your SD-1.5 model with scripts/train.py "
        f"(docs/training.md)"
    )


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The prompt's words (in order, once each) that the tokenizer has no single token for."""
    words = dict.fromkeys(w for w in WORD_PATTERN.findall(prompt.lower()) if w.isalpha())
    return [w for w in words if len(tokenizer.tokenize(w)) != 1]


EMPTY_PROMPT_NOTE = "the prompt is empty: no words ask for a motion, so the seed decides it"


def prompt_notes(base_model: str, tokenizer, prompt: str) -> list[str]:
    """Notes for a render of `prompt`: that it is empty, if it is; for a model with its own from-scratch
    base ("bundled"), its card and the prompt's unknown words too."""
    notes = [] if prompt.strip() else [EMPTY_PROMPT_NOTE]
    if base_model != "bundled":
        return notes
    notes.append(f"model: {model_card(known_words(tokenizer))}")
    unknown = unknown_words(tokenizer, prompt)
    if unknown:
        notes.append(f"words this model has never seen (it reads them as noise): {', '.join(unknown)}")
    return notes
