"""Text for LivePhoto: TextReweight, and the checks that turn a CONDITIONING into reweighted embeddings.

A CONDITIONING from TextReweight carries the re-weighted CLIP embeddings and a mark saying which
LIVEPHOTO_MODEL made them. A plain CLIPTextEncode conditioning is re-weighted by the sampler with
the same call, so both give the same frames. Prompts longer than CLIP's 75 tokens (ComfyUI encodes
them as several 77-token chunks) are refused, as the CLI and the Python API refuse them: the
re-weighter was trained on single 77-token prompts and motion descriptions are short.

TextReweight reads one prompt a line (livephoto_core.batch.prompt_lines) and gives a list, one
conditioning per prompt: the sampler makes a video of each.
"""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..livephoto_core.batch import prompt_lines
from ..livephoto_core.checks import MAX_PROMPT_TOKENS, check_prompt_tokens
from ..livephoto_core.defaults import CLIP_CONTEXT
from ..livephoto_core.errors import InvalidInputError
from .chart import token_weight_chart
from .handle import LIVEPHOTO_MODEL, LivePhotoModelHandle

REWEIGHTED_BY = "livephoto_reweighted_by"  # options key: the token of the LIVEPHOTO_MODEL that reweighted it
TOKEN_WEIGHTS = "livephoto_token_weights"  # options key: the weights [1, 77], for inspection
PROMPT_TEXT = "livephoto_prompt"  # options key: the prompt's words, for the sampler's videos output
# Conditioning options that change what a sampler does and that LivePhoto's sampler cannot honour.
UNSUPPORTED_OPTIONS = {
    "control": "a ControlNet",
    "gligen": "GLIGEN boxes",
    "area": "an area",
    "mask": "a mask",
    "hooks": "hooks",
}


def single_prompt(conditioning, width: int, what: str) -> tuple[torch.Tensor, dict]:
    """The one (embeddings [1, 77, width], options) pair of a CONDITIONING, or a message saying what to connect.

    `what` names the input ("positive", "negative") in messages.
    """
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else type(conditioning).__name__
        raise InvalidInputError(
            f"the {what} conditioning holds {count} entries; LivePhoto takes one prompt: connect a single "
            f"CLIPTextEncode or LivePhoto Text Reweight (no Conditioning Combine or scheduled CLIP hooks)"
        )
    embeddings, options = conditioning[0]
    unsupported = [UNSUPPORTED_OPTIONS[key] for key in UNSUPPORTED_OPTIONS if options.get(key) is not None]
    if unsupported:
        raise InvalidInputError(
            f"the {what} conditioning carries {' and '.join(unsupported)}, which the LivePhoto sampler cannot apply; "
            f"connect the text conditioning directly"
        )
    if embeddings.ndim != 3 or embeddings.shape[0] != 1 or embeddings.shape[2] != width:
        raise InvalidInputError(
            f"the {what} conditioning has shape {tuple(embeddings.shape)}; LivePhoto needs one SD-1.5 prompt "
            f"[1, 77, {width}]: encode it with the CLIP of the SD-1.5 checkpoint"
        )
    if embeddings.shape[1] > CLIP_CONTEXT:
        chunks = embeddings.shape[1] // CLIP_CONTEXT
        raise InvalidInputError(
            f"the {what} prompt is longer than {MAX_PROMPT_TOKENS} tokens (ComfyUI encoded it as {chunks} chunks of "
            f"{CLIP_CONTEXT}); LivePhoto reads one: shorten it (motion words first)"
        )
    return embeddings, options


def reweighted_embeddings(handle: LivePhotoModelHandle, embeddings: torch.Tensor, options: dict, what: str) -> torch.Tensor:
    """The single prompt of a CONDITIONING from TextReweight or CLIPTextEncode (``single_prompt``) ->
    reweighted embeddings [1, 77, D] on the model's device."""
    model = handle.model
    embeddings = embeddings.to(device=model.device, dtype=model.dtype)
    made_by = options.get(REWEIGHTED_BY)
    if made_by is None:
        return model.reweight_text(embeddings)[0]
    if made_by != handle.token:
        raise InvalidInputError(
            f"the {what} conditioning was reweighted by another LivePhoto model; connect a Text Reweight that "
            f"uses the same LIVEPHOTO_MODEL as the sampler (or a plain CLIPTextEncode)"
        )
    return embeddings


def prompt_tokens(tokens: dict) -> list[tuple]:
    """The prompt's own (token, weight, word id) entries of ``clip.tokenize(text, return_word_ids=True)``,
    without start, end and padding tokens."""
    if set(tokens) != {"l"}:
        raise InvalidInputError(
            f"this CLIP has the text encoders {', '.join(sorted(tokens))}; LivePhoto needs SD-1.5's CLIP-L: "
            f"connect the CLIP of the SD-1.5 checkpoint"
        )
    return [token for chunk in tokens["l"] for token in chunk if token[2] != 0]


def token_label(clip, token) -> str:
    if isinstance(token, torch.Tensor):  # a textual-inversion embedding vector
        return "<emb>"
    return clip.decode([token]).strip() or "?"


class TextReweight(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LivePhotoTextReweight",
            display_name="LivePhoto Text Reweight",
            category="LivePhoto",
            description="Encodes a motion prompt with CLIP and lets LivePhoto's text re-weighter give each token a "
            "weight from 0 to 1 (the words that say how things move should weigh most); charts the weights.",
            inputs=[
                io.Custom(LIVEPHOTO_MODEL).Input("livephoto_model", tooltip="From Load LivePhoto Model."),
                io.Clip.Input("clip", tooltip="The CLIP of the SD-1.5 checkpoint."),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="",
                    tooltip=f"The motion, e.g. 'shaking head' or 'camera zooms in'; at most {MAX_PROMPT_TOKENS} tokens. "
                    f"One prompt a line: several lines make one video each.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning", is_output_list=True,
                    tooltip="The reweighted text, for the LivePhoto Sampler's positive (or negative) input; one per "
                    "line of the text.",
                ),
                io.Image.Output(
                    display_name="weights_chart", is_output_list=True,
                    tooltip="A bar chart of each token's weight (0 to 1) with the tokens on the axis; one per line.",
                ),
            ],
        )

    @classmethod
    def execute(cls, livephoto_model: LivePhotoModelHandle, clip, text: str) -> io.NodeOutput:
        reweighted = [reweight_prompt(livephoto_model, clip, prompt) for prompt in prompt_lines(text, "text")]
        conditionings, charts, summaries = (list(outputs) for outputs in zip(*reweighted))
        return io.NodeOutput(conditionings, charts, ui=ui.PreviewText("\n".join(summaries)))


def reweight_prompt(handle: LivePhotoModelHandle, clip, prompt: str) -> tuple[list, torch.Tensor, str]:
    """One prompt -> its reweighted CONDITIONING, its weights chart and a line of token:weight pairs."""
    # Word ids mark the prompt's own tokens; ComfyUI's encoders read only each entry's token and weight.
    tokenized = clip.tokenize(prompt, return_word_ids=True)
    tokens = prompt_tokens(tokenized)
    check_prompt_tokens(len(tokens))
    encoded = clip.encode_from_tokens_scheduled(tokenized)
    embeddings, options = single_prompt(encoded, handle.model.config.cross_attention_dim, "text")
    model = handle.load()
    reweighted, weights = model.reweight_text(embeddings.to(device=model.device, dtype=model.dtype))
    output_device = comfy.model_management.intermediate_device()
    weights = weights.float().to(output_device)
    conditioning = [[
        reweighted.to(device=output_device, dtype=embeddings.dtype),
        {**options, REWEIGHTED_BY: handle.token, TOKEN_WEIGHTS: weights, PROMPT_TEXT: prompt},
    ]]
    labels = [token_label(clip, token[0]) for token in tokens]
    token_weights = weights[0, 1 : 1 + len(tokens)].tolist()  # position 0 is the start token
    summary = " ".join(f"{label}:{weight:.2f}" for label, weight in zip(labels, token_weights)) or "(empty prompt)"
    return conditioning, token_weight_chart(labels, token_weights).to(output_device), summary
