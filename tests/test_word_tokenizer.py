"""The from-scratch word tokenizer: every listed word is exactly one token, whatever the word list."""

from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import CLIPTokenizer

from livephoto_core.training.toyworld import TOY_VOCABULARY
from livephoto_core.training.word_tokenizer import write_word_tokenizer


def tokens_of(folder, words):
    tokenizer = CLIPTokenizer.from_pretrained(write_word_tokenizer(folder, words))
    return {word: tokenizer.tokenize(word) for word in words}


def test_every_toy_word_is_one_token(tmp_path):
    # "square" and "triangle" were split by merges of other words (squ+ar+e) before the fixed point.
    split = {w: t for w, t in tokens_of(tmp_path, list(TOY_VOCABULARY)).items() if len(t) != 1}
    assert not split


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrst", min_size=1, max_size=9), min_size=1, max_size=30, unique=True))
def test_any_word_list_gives_one_token_per_word(tmp_path_factory, words):
    folder = tmp_path_factory.mktemp("tok")
    assert all(len(t) == 1 for t in tokens_of(folder, words).values())


def test_unknown_words_are_named_once_in_order(tmp_path):
    from livephoto_core.vocabulary import known_words, prompt_notes, unknown_words

    tokenizer = CLIPTokenizer.from_pretrained(write_word_tokenizer(tmp_path, list(TOY_VOCABULARY)))
    assert {w for w in TOY_VOCABULARY if len(w) > 1} <= set(known_words(tokenizer))  # "a": a byte of its own
    assert unknown_words(tokenizer, "The woman turns her head to the LEFT, the woman smiles!") == [
        "woman", "turns", "her", "head", "smiles"]
    assert unknown_words(tokenizer, "camera zooms in on a red star") == []
    card, unknown = prompt_notes("bundled", tokenizer, "the red circle wiggles")
    assert card.startswith("model: a miniature") and "left, right, up, down" in card
    assert unknown == "words this model has never seen (it reads them as noise): wiggles"
    assert prompt_notes("sd15", tokenizer, "the red circle wiggles") == []  # a real SD-1.5: nothing to say
    for base in ("sd15", "bundled"):  # an empty prompt leaves the motion to the seed, on any model
        assert prompt_notes(base, tokenizer, "  ")[0] == "the prompt is empty: no words ask for a motion, so the seed decides it"
