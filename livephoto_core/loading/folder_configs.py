"""The configs of diffusers and transformers model folders, as LivePhoto reads them: one Schema each.

Upstream configs carry dozens of keys; each schema declares the ones LivePhoto reads and the structural
ones the library that builds the model relies on, with the ranges a working model has, and tolerates the
rest. ``read_config`` checks a folder's file against its schema when the folder is first looked at (by
``detect_path``, before any weights are read) and returns the declared fields only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checks import MAX_STEPS
from ..defaults import CLIP_CONTEXT
from .schema import Bool, Either, Field, Int, List, Number, Schema, Str, optional, read_json_object

_WIDTH = Int(1, 16384)  # a layer width or channel count: SD-1.5's widest is 1280, SDXL's context 2048
_COUNT = Int(1, 1024)  # heads, groups, layers
_PER_BLOCK = List(_COUNT, 1, 8)  # diffusers takes some sizes as one number or a list with one per block
_BLOCK_TYPES = List(Str(max_length=100), 1, 8)
_EPS = Number(0, 1, open_low=True)

# Rules between fields (a Schema checks each field alone), for the failures the libraries would meet later.


def _groups_divide_widths(config: dict[str, Any]):
    """GroupNorm splits each block's channels evenly between its groups; diffusers fails building it otherwise."""
    groups = config.get("norm_num_groups")
    for width in config.get("block_out_channels", ()) if groups else ():
        if width % groups:
            yield f"{groups} norm groups do not divide the block width {width}"
            return


def _heads_divide_width(config: dict[str, Any]):
    """Attention splits the width evenly between its heads; transformers fails building it otherwise."""
    heads, width = config.get("num_attention_heads"), config.get("hidden_size")
    if heads and width and width % heads:
        yield f"{heads} attention heads do not divide the width {width}"


def _patch_fits_image(config: dict[str, Any]):
    if config["patch_size"] > config["image_size"]:
        yield f"patch size {config['patch_size']} exceeds the image size {config['image_size']}"


def _schedule_rules(config: dict[str, Any]):
    """diffusers' defaults (beta 0.0001 to 0.02, 1000 timesteps) stand in for what a config leaves out."""
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    if start >= end:
        yield f"beta_start {start} is not below beta_end {end}"
    betas, timesteps = config.get("trained_betas"), config.get("num_train_timesteps", 1000)
    if betas is not None and len(betas) != timesteps:
        yield f"trained_betas holds {len(betas)} values, not one per training timestep ({timesteps})"


MODEL_INDEX = Schema("model_index.json", {"_class_name": Field(Str(max_length=200), default="pipeline")})

# A config.json is named by one of these; detection reads them to know which schema applies.
FOLDER_KIND = Schema("config.json", {
    "_class_name": Field(optional(Str(max_length=200)), default=None),
    "model_type": Field(optional(Str(max_length=200)), default=None),
})

UNET = Schema("the UNet config", {
    "in_channels": Field(Int(1, 1024), default=4),
    "out_channels": Int(1, 1024),
    "sample_size": Either((Int(1, 4096), List(Int(1, 4096), 2, 2))),
    "block_out_channels": List(_WIDTH, 1, 8),
    "down_block_types": _BLOCK_TYPES,
    "up_block_types": _BLOCK_TYPES,
    "layers_per_block": Either((_COUNT, _PER_BLOCK)),
    "norm_num_groups": optional(_COUNT),
    "attention_head_dim": Either((_COUNT, _PER_BLOCK)),
    "num_attention_heads": optional(Either((_COUNT, _PER_BLOCK))),
    "transformer_layers_per_block": Either((_COUNT, List(Either((_COUNT, _PER_BLOCK)), 1, 8))),
    # Detection tells SD-1.5 (768), SD-2 (1024, linear projections) and SDXL (text_time) apart by these.
    "cross_attention_dim": Field(optional(Either((_WIDTH, List(_WIDTH, 1, 8)))), default=None),
    "use_linear_projection": Field(Bool(), default=False),
    "addition_embed_type": Field(optional(Str(max_length=100)), default=None),
}, rules=_groups_divide_widths)

VAE = Schema("the VAE config", {
    "in_channels": Int(1, 64),
    "out_channels": Int(1, 64),
    "latent_channels": Field(Int(1, 64), default=4),
    "block_out_channels": List(_WIDTH, 1, 8),
    "down_block_types": _BLOCK_TYPES,
    "up_block_types": _BLOCK_TYPES,
    "layers_per_block": _COUNT,
    "norm_num_groups": _COUNT,
    "sample_size": Either((Int(1, 4096), List(Int(1, 4096), 2, 2))),
    # Latents are multiplied and divided by it (encoding.py): zero or a huge factor turns them to inf or 0.
    "scaling_factor": Number(0, 1000, open_low=True),
    "shift_factor": optional(Number(-1000, 1000)),
}, rules=_groups_divide_widths)

TEXT_ENCODER = Schema("the text encoder config", {
    "vocab_size": Int(1, 2**20),
    "hidden_size": _WIDTH,
    "intermediate_size": Int(1, 2**17),
    "num_hidden_layers": Int(1, 256),
    "num_attention_heads": _COUNT,
    # Prompts are CLIP_CONTEXT tokens long; fewer positions load, then fail at the first prompt.
    "max_position_embeddings": Int(CLIP_CONTEXT, 2**16),
    "hidden_act": Str(max_length=100),
    "layer_norm_eps": _EPS,
    "bos_token_id": optional(Int(0, 2**31)),
    "eos_token_id": optional(Int(0, 2**31)),
    "pad_token_id": optional(Int(0, 2**31)),
    "projection_dim": optional(_WIDTH),
}, rules=_heads_divide_width)

DINOV2 = Schema("the DINOv2 config", {
    "model_type": Field(Str(max_length=100), required=True),
    "hidden_size": Field(_WIDTH, default=768),
    "num_hidden_layers": Field(Int(1, 256), default=12),
    "num_attention_heads": Field(_COUNT, default=12),
    "patch_size": Field(Int(1, 4096), default=14),
    "image_size": Field(Int(1, 8192), default=224),
    "num_channels": Field(Int(1, 64), default=3),
    "mlp_ratio": Number(0, 64, open_low=True),
    "use_swiglu_ffn": Field(Bool(), default=False),
    "num_register_tokens": Field(Int(0, 1024), default=0),
    "layer_norm_eps": _EPS,
}, rules=lambda config: [*_heads_divide_width(config), *_patch_fits_image(config)])

MOTION_ADAPTER = Schema("the MotionAdapter config", {
    "block_out_channels": Field(List(_WIDTH, 1, 8), default=[320, 640, 1280, 1280]),
    "motion_layers_per_block": Either((_COUNT, _PER_BLOCK)),
    "motion_transformer_layers_per_block": Either((_COUNT, List(Either((_COUNT, _PER_BLOCK)), 1, 8))),
    "motion_mid_block_layers_per_block": _COUNT,
    "motion_transformer_layers_per_mid_block": Either((_COUNT, _PER_BLOCK)),
    "motion_num_attention_heads": Either((_COUNT, _PER_BLOCK)),
    "motion_norm_num_groups": _COUNT,
    "motion_max_seq_length": Field(Int(1, 4096), default=32),
    "use_motion_mid_block": Field(Bool(), default=True),
    "conv_in_channels": optional(_COUNT),
})

# diffusers' scheduler config, handed to every scheduler LivePhoto offers (sampling.SCHEDULERS): the
# declared fields only, so a key no one checked never reaches one of them.
SCHEDULER = Schema("the scheduler config", {
    # At least MAX_STEPS: every step count a render accepts must fit into the training timesteps.
    "num_train_timesteps": Int(MAX_STEPS, 100_000),
    "beta_start": Number(0, 1, open_low=True),
    "beta_end": Number(0, 1, open_low=True),
    # The schedules all of SCHEDULERS implement; others (DDPM's "sigmoid", Heun's "exp") fail in the rest.
    "beta_schedule": Str(("linear", "scaled_linear", "squaredcos_cap_v2")),
    "trained_betas": optional(List(Number(0, 1, open_low=True), 1, 100_000)),
    "prediction_type": Str(("epsilon", "v_prediction", "sample")),
    "timestep_spacing": Str(("leading", "trailing", "linspace")),
    "steps_offset": Int(0, 1000),
    "set_alpha_to_one": Bool(),
    "clip_sample": Bool(),
    "clip_sample_range": Number(0, 1000, open_low=True),
    "rescale_betas_zero_snr": Bool(),
    "thresholding": Bool(),
    "dynamic_thresholding_ratio": Number(0, 1, open_low=True),
    "sample_max_value": Number(0, 1000, open_low=True),
}, rules=_schedule_rules)


def read_config(path: str | os.PathLike, schema: Schema) -> dict[str, Any]:
    """The declared fields of a model folder's JSON file, checked against ``schema``."""
    path = Path(path)
    return schema.check(read_json_object(path), str(path))
