"""The training loop and its step: data -> (from scratch: base, VAE and text stages, in scratch.py)
-> LivePhoto training -> export. Beside it: batching.py (what a step reads), run_log.py (log.jsonl),
resume.py (checkpoints), recipe.py (the config).

One optimizer step reads ``batch_size x gradient_accumulation_steps`` clips per process. For each
clip: frames -> frozen VAE latents (posterior mode, times the scaling factor); frame 0's latent is
the reference; conditioning channels = [reference, frame embedding, intensity level]; every frame
is noised at one timestep; the caption (replaced by the empty prompt with p = text_dropout) is
encoded, reweighted and followed by the DINOv2 content tokens of frame 0; the loss is the MSE to
the noise (epsilon) or to v (v_prediction). With data.latent_cache the frozen encoders' outputs (VAE
latents, CLIP hidden states, DINOv2 hidden states) come from the cache instead (latent_cache.py).

Exact resume: the data order is a pure function of (seed, epoch), each clip's noise, timestep and
text dropout a pure function of (seed, epoch, its place in that order), and a checkpoint holds the
trained weights, their EMA, the optimizer, the LR scheduler and every process's RNG states; so a
resumed run computes the same losses as one that was never interrupted. Because the randomness
belongs to the clip, not to the process or batch it lands in, one process with batch 2 and two
processes with batch 1 compute the same step (up to the order of float sums).

Several processes train with DDP, or with FSDP2 when accelerate's launch config asks for it (see
``distributed_strategy``): then the model and optimizer state are sharded, checkpoints are
accelerate's sharded state, and the main process keeps a whole copy of the model on the CPU for
validation and export.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..config import LivePhotoConfig
from ..encoding import encode_text
from ..errors import InvalidInputError, OutputExistsError
from ..intensity import level_from_ssim, mean_adjacent_ssim
from ..loading.checkpoint import read_livephoto_checkpoint
from ..model import LivePhotoModel
from ..pipeline import LivePhotoPipeline
from ..sampling import make_scheduler
from .base import TrainingBase, load_training_base
from .batching import (
    HELDOUT_STREAM, ClipStream, FrozenEncoders, clip_generator, denoising_target, draw_timestep, reference_features,
    tokenize_captions,
)
from .data import ClipSampling, VideoCaptionDataset, label_videos, load_clip, read_index
from .ema import EMA
from .export import export_model
from .latent_cache import CachedDinov2, LatentCacheDataset, epochs_needed, open_latent_cache
from .recipe import TrainConfig
from .resume import (
    TrainingCheckpoint,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    SHARDED_EMA,
    SHARDED_STATE,
    rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)
from .run_log import RunLog, Window
from .shards import ShardStream, label_shards, list_shards
from .scratch import TimeLimitReached, prepare_scratch_base
from .validation import render_validation, validation_sample

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)  # optimizer step -> loss, in this invocation
    export: Path | None = None  # the exported model folder
    stopped_early: bool = False  # by time_limit_minutes


class Trainee(nn.Module):
    """Everything that trains, as one module for DDP or FSDP: the LivePhoto model and, when it
    trains, the text encoder."""

    def __init__(self, model: LivePhotoModel, text_encoder: nn.Module | None):
        super().__init__()
        self.model = model
        self.text_encoder = text_encoder

    def forward(self, noisy_latents, timesteps, text, conditioning, *, reference=None, content_features=None):
        """text: token ids [B, 77] when the text encoder trains, else its embeddings [B, 77, D];
        reference: the reference frames [B, 3, H, W] in [-1, 1], or content_features: the frozen DINOv2's
        hidden states of them [B, N, hidden] (from the latent cache); the rest as for LivePhotoUNet.forward.
        The frozen DINOv2 runs here, not before the call: FSDP shards it with the rest, and a sharded
        module's weights are whole only inside this forward."""
        if content_features is None:
            content_features = reference_features(self.model.content_encoder, reference)
        if self.text_encoder is not None:
            text = encode_text(self.text_encoder, text)
        reweighted, _ = self.model.reweight_text(text)
        content = self.model.content_encoder.project(content_features)
        # One context row per video, shared by its frames, as sampling passes it.
        context = torch.cat([reweighted, content.to(reweighted.dtype)], dim=1)
        return self.model.unet(noisy_latents, timesteps, context, conditioning)


def make_lr_scheduler(config: TrainConfig, optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )


def make_noise_scheduler(base_scheduler_config: dict, prediction_type: str):
    """DDPM on the base's noise schedule, predicting what the LivePhoto config says."""
    return make_scheduler("ddpm", base_scheduler_config, prediction_type)


def make_livephoto_config(config: TrainConfig, base: TrainingBase, thresholds) -> LivePhotoConfig:
    """The LivePhoto config: derived from the data and the base, plus config.model.livephoto."""
    values = dict(
        base_model="bundled" if config.model.from_scratch else "sd15",
        num_frames=config.data.num_frames,
        height=config.data.size,
        width=config.data.size,
        fps=config.data.fps,
        prediction_type=config.model.prediction_type,
        cross_attention_dim=base.unet2d.config.cross_attention_dim,
        intensity_thresholds=tuple(thresholds),
        dinov2_hidden_size=base.dinov2.config.hidden_size,
        dinov2_patch_size=base.dinov2.config.patch_size,
        unet_block_out_channels=tuple(base.unet2d.config.block_out_channels),
    )
    if config.model.from_scratch:
        values.update(dinov2_image_size=base.dinov2.config.image_size, dinov2_variant="random-tiny")
    if base.motion is not None:
        adapter = base.motion.adapter.config
        values.update(motion_max_seq_length=adapter.motion_max_seq_length,
                      motion_use_mid_block=adapter.use_motion_mid_block,
                      motion_num_attention_heads=adapter.motion_num_attention_heads,
                      motion_norm_num_groups=adapter.motion_norm_num_groups)
        if config.model.freeze_motion_module:
            values.update(motion_weights="external", motion_module_hash=base.motion.content_hash)
    return LivePhotoConfig(**{**values, **config.model.livephoto})


def start_from_checkpoint(model: LivePhotoModel, path: str) -> list[str]:
    """Copy a LivePhoto checkpoint's weights into `model` (fine-tuning); returns the names of the
    model's trained tensors the checkpoint lacks, which keep their initialisation (layers this config
    adds, such as the zero-initialised text projection of `text_time_embedding`)."""
    _, state = read_livephoto_checkpoint(path)
    expected = model.trainable_state_dict()
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or wrong:
        raise InvalidInputError(
            f"model.init_from {path} does not fit this config: {len(unexpected)} tensors it has are not in this "
            f"model (e.g. {unexpected[:2]}), {len(wrong)} have other shapes (e.g. {wrong[:2]}); train on the base "
            f"and with the model.livephoto settings it was trained with"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor)
    return sorted(set(expected) - set(state))


# --- processes -----------------------------------------------------------------------------------


def distributed_strategy() -> str:
    """"ddp" or "fsdp": what the accelerate launch config asked for (``accelerate launch`` turns its
    ``distributed_type`` into these environment variables). The strategy lives in the launch config,
    not in TrainConfig, so that one switch decides it; checkpoints record it."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise InvalidInputError(
            "this trainer does not run under DeepSpeed: its checkpoints, EMA and export know DDP and FSDP; "
            "launch with configs/accelerate/fsdp.yaml (sharded) or without a config file (DDP)"
        )
    return "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else "ddp"


def several_cpu_processes() -> bool:
    """Several processes without CUDA (torchrun, or accelerate launch --multi_gpu, on a CPU machine): accelerate
    connects them (DDP over gloo) only when told they run on the CPU. (accelerate launch --cpu starts a single
    process unless MPI is set up.)"""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(config: TrainConfig, strategy: str):
    from accelerate import Accelerator

    multi_cpu = several_cpu_processes()
    plugin = fsdp_plugin(config) if strategy == "fsdp" else None
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=multi_cpu, fsdp_plugin=plugin,
    )
    if plugin is not None and accelerator.distributed_type.value != "FSDP":
        if not multi_cpu:
            raise InvalidInputError(
                f"FSDP was asked for but accelerate set up {accelerator.distributed_type.value} with "
                f"{accelerator.num_processes} process(es); launch 2 or more processes (--num_processes)"
            )
        force_fsdp_on_cpu(plugin)
    return accelerator


def fsdp_plugin(config: TrainConfig):
    """accelerate's FSDP plugin as the launch config set it up, checked for what this trainer supports."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    import torch.distributed.fsdp

    if not hasattr(torch.distributed.fsdp, "fully_shard"):
        raise InvalidInputError(
            f"FSDP here is FSDP2 (torch.distributed.fsdp.fully_shard), which torch {torch.__version__} lacks; "
            f"install torch >= 2.6"
        )
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables that accelerate launch sets
    # FSDP1's flat parameters need use_orig_params to mix frozen and trained weights in one unit and
    # do not run on the CPU; FSDP2 shards each parameter on its own, on any device.
    if plugin.fsdp_version != 2:
        raise InvalidInputError(f"the launch config asks for FSDP version {plugin.fsdp_version}; set fsdp_version: 2 "
                                f"(configs/accelerate/fsdp.yaml)")
    if plugin.state_dict_type.name != "SHARDED_STATE_DICT":
        raise InvalidInputError(
            f"the launch config sets fsdp_state_dict_type {plugin.state_dict_type.name}; set SHARDED_STATE_DICT "
            f"(each process saves its own shards; the export gathers whole weights on the main process)"
        )
    return plugin


def force_fsdp_on_cpu(plugin) -> None:
    """accelerate 1.16 enters FSDP only from a multi-GPU-like state (AcceleratorState.__init__); on the
    CPU it keeps MULTI_CPU and would train plain DDP without a word. fully_shard itself runs on the
    CPU over gloo, so switch the shared state to FSDP before anything is prepared, as accelerate does
    on a GPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    state = AcceleratorState()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def gather_to_main(tensors: dict[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor] | None:
    """Whole copies of (sharded) tensors on the main process's CPU, None on the others. Collective:
    every process calls it with the same names in the same order. One tensor at a time, so a process
    holds at most one whole tensor beyond its shards."""
    from torch.distributed.tensor import DTensor

    whole = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if main:
            whole[name] = full.detach().to("cpu", copy=True)
    return whole if main else None


# --- the run -------------------------------------------------------------------------------------


class Trainer:
    """One invocation of a training run; ``Trainer(config, resume).run()``. With ``export_only`` it
    exports the checkpoint it resumes from (the EMA weights, as at the end of a run) and trains nothing:
    how a checkpoint picked mid-run becomes a model."""

    def __init__(self, config: TrainConfig, resume: str | None = None, export_only: bool = False):
        self.config = config
        self.export_only = export_only
        self.output_dir = Path(config.output_dir)
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.started = time.perf_counter()
        resume_from = resolve_resume(self.checkpoints_dir, resume)
        if export_only and resume_from is None:
            raise InvalidInputError(
                f"exporting needs a checkpoint: pass --resume with a step-* folder of {self.checkpoints_dir}, "
                f"or latest (it holds none yet)"
            )
        started_before = list_checkpoints(self.checkpoints_dir) or list_checkpoints(self.output_dir / "vae_checkpoints")
        if resume is None and started_before:
            raise OutputExistsError(
                f"{self.output_dir} already holds checkpoints; pass --resume latest to continue, "
                f"or choose a new output_dir"
            )
        self.checkpoint = load_checkpoint(resume_from) if resume_from is not None else None
        self.strategy = distributed_strategy()
        if self.checkpoint is not None and self.checkpoint.strategy != self.strategy:
            raise InvalidInputError(
                f"{resume_from} was written by a {self.checkpoint.strategy} run and this one is {self.strategy}; "
                f"resume with the launch config it was trained with (a checkpoint is not converted between them)"
            )
        self.accelerator = make_accelerator(config, self.strategy)
        self.main = self.accelerator.is_main_process
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(config.to_json(), encoding="utf-8")
        self.accelerator.wait_for_everyone()
        self.log = RunLog(self.output_dir / "log.jsonl", self.main)
        self.log({"event": "start", "resume": str(resume_from) if resume_from else None, "processes": self.world,
                  "strategy": self.strategy, "device": str(self.device), "mixed_precision": config.mixed_precision,
                  "torch_threads": config.torch_threads or torch.get_num_threads(), "livephoto_version": __version__},
                 f"run {self.output_dir}: {self.world} process(es) ({self.strategy}) on {self.device}"
                 + (f", resuming from {resume_from.name}" if resume_from else ""))
        if self.checkpoint is not None:
            changed = config_changes(self.checkpoint.state["config"], config.to_dict())
            if changed:
                self.log({"event": "config_changed", "keys": changed},
                         f"the config differs from the checkpoint's in {', '.join(changed)}")

    # -- setup --

    def prepare_data(self) -> None:
        """The labelling pass (main first, so the others only read its cache) and the dataset: an
        index's videos, or a stream of tar shards."""
        config = self.config
        self.sampling = ClipSampling(config.data.num_frames, config.data.stride, config.data.size)
        thresholds = self.checkpoint.state["thresholds"] if self.checkpoint else config.data.thresholds
        self.latent_cache = None
        if config.data.latent_cache is not None:
            self.prepare_cached_data(thresholds)
            return
        cache = Path(config.data.ssim_cache) if config.data.ssim_cache else self.output_dir / "ssim_cache.jsonl"
        if config.data.shards:
            shards = list_shards(config.data.shards)

            def label(workers):
                return label_shards(shards, self.sampling, cache, workers, thresholds)
        else:
            entries = read_index(config.data.index, config.data.root)

            def label(workers):
                return label_videos(entries, self.sampling, cache, workers, thresholds)
        if self.main:
            labelled = label(config.data.label_workers)
        self.accelerator.wait_for_everyone()
        if not self.main:
            labelled = label(1)
        counts = labelled.counts
        self.data_counts = counts
        self.log({"event": "data", **counts, "thresholds": list(labelled.thresholds)},
                 f"data: {counts['usable']} of {counts['total']} videos usable ({counts['decoded']} labelled now, "
                 f"{counts['cached']} from the cache; skipped {counts['missing']} missing, "
                 f"{counts['undecodable']} undecodable, {counts['too_short']} too short)")
        self.thresholds = labelled.thresholds
        if config.data.shards:
            self.dataset = ShardStream(labelled.shards, self.thresholds, self.sampling, config.seed,
                                       config.data.random_start)
        else:
            self.dataset = VideoCaptionDataset(
                labelled.videos, self.thresholds, self.sampling, config.seed, config.data.random_start
            )

    def prepare_cached_data(self, thresholds) -> None:
        """The dataset from data.latent_cache (no labelling pass: the cache holds each clip's SSIM and
        the thresholds its pass fitted); refused before any model is loaded when it holds fewer
        epochs than config.steps reads."""
        config, cache = self.config, open_latent_cache(self.config)
        needed = epochs_needed(config, cache.videos, self.world)
        if cache.random_start and needed > cache.epochs:
            raise InvalidInputError(
                f"data.latent_cache {cache.folder} holds {cache.epochs} epoch(s) of clips, but {config.steps} steps "
                f"of {config.batch_size * config.gradient_accumulation_steps * self.world} clips over "
                f"{cache.videos} videos read {needed} (random_start draws new clips every epoch); add epochs "
                f"with scripts/cache_latents.py --epochs {needed} (it keeps those written) or lower steps"
            )
        self.latent_cache = cache
        self.thresholds = tuple(thresholds) if thresholds is not None else tuple(cache.index["thresholds"])
        self.data_counts = counts = cache.index["counts"]
        self.log({"event": "data", **counts, "thresholds": list(self.thresholds), "latent_cache": str(cache.folder),
                  "cached_epochs": cache.epochs},
                 f"data: {counts['usable']} videos from the latent cache {cache.folder} ({cache.epochs} epoch(s))")
        self.dataset = LatentCacheDataset(cache, self.thresholds)

    def prepare_model(self) -> None:
        config, accelerator = self.config, self.accelerator
        if config.model.from_scratch and self.main and not (self.output_dir / "base").is_dir():
            prepare_scratch_base(config, self.output_dir, self.dataset, self.log, self.out_of_time)
        accelerator.wait_for_everyone()
        cached = self.latent_cache is not None
        dinov2 = CachedDinov2(self.latent_cache.index["dinov2_config"]) if cached else None
        self.base = base = load_training_base(config, self.output_dir, dinov2)

        torch.manual_seed(config.seed)  # the new LivePhoto layers start alike on every process
        self.livephoto_config = make_livephoto_config(config, base, self.thresholds)
        adapter = base.motion.adapter if base.motion is not None else None
        model = LivePhotoModel.from_base(self.livephoto_config, base.unet2d, base.dinov2, adapter)
        if config.model.from_scratch:
            model.unet.motion_unet.requires_grad_(True)  # no pretrained base: the whole UNet trains
        elif config.model.freeze_motion_module:
            for name, param in model.unet.motion_unet.named_parameters():
                if ".motion_modules." in name:
                    param.requires_grad_(False)
        if config.model.init_from is not None:
            new = start_from_checkpoint(model, config.model.init_from)
            self.log({"event": "init_from", "path": config.model.init_from, "new_tensors": new},
                     f"started from {config.model.init_from} ({len(new)} tensors new in this config)")
        if config.gradient_checkpointing:
            model.unet.motion_unet.enable_gradient_checkpointing()
        self.model = model
        # From the latent cache there is no VAE or text encoder: nothing of them reaches the device.
        self.text_encoder = self.vae = None
        if not cached:
            self.text_encoder = base.text_encoder.to(self.device).requires_grad_(config.model.train_text_encoder)
            self.vae = base.vae.to(self.device).eval().requires_grad_(False)
        trainee = Trainee(model, self.text_encoder if config.model.train_text_encoder else None)
        # FSDP shards the trainee in place, and a sharded module runs only when every process calls it;
        # the main process keeps a whole copy on the CPU to validate and export (trained_weights).
        self.host = copy.deepcopy(trainee).to("cpu") if self.strategy == "fsdp" and self.main else None
        trainee = trainee.to(self.device).train()
        named = trainee_parameters(trainee)
        frozen = sum(p.numel() for p in trainee.parameters() if not p.requires_grad)
        if not cached:
            frozen += sum(p.numel() for p in self.vae.parameters())
        if not cached and not config.model.train_text_encoder:
            frozen += sum(p.numel() for p in self.text_encoder.parameters())
        trained = sum(p.numel() for p in named.values())
        self.log({"event": "model", "trained_parameters": trained, "frozen_parameters": frozen},
                 f"training {trained / 1e6:.2f} M parameters ({frozen / 1e6:.2f} M frozen)")

        optimizer = torch.optim.AdamW(
            list(named.values()), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon, weight_decay=config.weight_decay,
        )
        self.lr_scheduler = make_lr_scheduler(config, optimizer)
        self.trainee, self.optimizer = accelerator.prepare(trainee, optimizer)
        self.unwrapped = accelerator.unwrap_model(self.trainee)
        self.named = trainee_parameters(self.unwrapped)  # under FSDP: the shards (DTensors)
        # Made from the prepared parameters, so that under FSDP each process averages its own shards.
        self.ema = EMA(self.named, config.ema_decay) if config.ema_decay is not None else None
        self.step = 0
        if self.checkpoint is not None:
            self.restore(self.checkpoint)
        self.noise_scheduler = make_noise_scheduler(base.scheduler_config, self.livephoto_config.prediction_type)
        self.encoders = None if cached else FrozenEncoders(
            self.vae, self.text_encoder, base.tokenizer, model.content_encoder, self.device, config.cache_latents,
            config.cache_text,
        )
        self.empty_text = self.latent_cache.empty_text().to(self.device) if cached else None

    def restore(self, checkpoint: TrainingCheckpoint) -> None:
        if self.strategy == "fsdp":
            self.restore_sharded(checkpoint)
        else:
            self.restore_whole(checkpoint)
        self.lr_scheduler.load_state_dict(checkpoint.state["lr_scheduler"])
        if "grad_scaler" in checkpoint.state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(checkpoint.state["grad_scaler"])
        states = checkpoint.state["rng"]
        if checkpoint.state["processes"] != self.world:
            logger.warning("the checkpoint was written by %d processes, this run has %d: the data order and "
                           "noise continue, but not bit for bit", checkpoint.state["processes"], self.world)
        set_rng_state(states[self.rank % len(states)])
        self.step = checkpoint.step

    def restore_whole(self, checkpoint: TrainingCheckpoint) -> None:
        """DDP: every process copies the whole trained weights, EMA and optimizer state."""
        named = self.named
        missing = sorted(set(named) - set(checkpoint.trainable))
        unexpected = sorted(set(checkpoint.trainable) - set(named))
        if missing or unexpected:
            raise InvalidInputError(
                f"the checkpoint does not fit this config: {len(missing)} trained tensors missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); resume with the config it was trained with"
            )
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(checkpoint.trainable[name])
        self.optimizer.load_state_dict(checkpoint.optimizer)
        if self.ema is not None:
            if checkpoint.ema is None:
                raise InvalidInputError("ema_decay is set but the checkpoint has no EMA weights; resume without EMA")
            self.ema.load_state_dict(checkpoint.ema)

    def restore_sharded(self, checkpoint: TrainingCheckpoint) -> None:
        """FSDP: every process reads its shards of the model, optimizer and EMA."""
        import torch.distributed.checkpoint as dcp

        ema_folder = checkpoint.path / SHARDED_EMA
        if self.ema is not None and not ema_folder.is_dir():
            raise InvalidInputError("ema_decay is set but the checkpoint has no EMA weights; resume without EMA")
        try:
            self.accelerator.load_state(str(checkpoint.path / SHARDED_STATE))
            if self.ema is not None:
                dcp.load(self.ema.shadow, checkpoint_id=str(ema_folder))
        except Exception as error:  # noqa: BLE001 - whatever torch.distributed.checkpoint raises for a mismatch
            raise InvalidInputError(
                f"checkpoint {checkpoint.path} does not fit this run ({type(error).__name__}: {str(error)[:300]}); "
                f"resume with the config it was trained with, or from an older checkpoint"
            ) from None

    # -- one step --

    def loss(self, batch: dict, generators: list[torch.Generator], text_dropout: float, module: nn.Module):
        """The mean denoising loss of a batch; `generators` (one per clip) draw each clip's noise,
        timestep and text dropout."""
        config, device = self.config, self.device
        if self.encoders is None:  # from the latent cache
            latents = batch["latents"].to(device)
        else:
            latents = self.encoders.clip_latents(batch["frames"])
        num_frames = latents.shape[1]
        train_timesteps = self.noise_scheduler.config.num_train_timesteps
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(latents)
        timesteps = torch.cat([
            draw_timestep(g, train_timesteps, config.high_noise_fraction, config.high_noise_from) for g in generators
        ]).to(device)
        dropped = [torch.rand(1, generator=g).item() < text_dropout for g in generators]
        if self.encoders is None:
            text = torch.stack([self.empty_text if drop else row.to(device) for row, drop in zip(batch["text"], dropped)])
            content = {"content_features": batch["content"].to(device)}
        else:
            captions = ["" if drop else caption for caption, drop in zip(batch["caption"], dropped)]
            if config.model.train_text_encoder:
                text = tokenize_captions(self.base.tokenizer, captions).to(device)
            else:
                text = self.encoders.text_embeddings(captions)
            content = {"reference": batch["reference"].to(device)}
        conditioning = self.model.conditioning_channels(latents[:, 0], num_frames, batch["level"].to(latents))
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = denoising_target(self.noise_scheduler, self.livephoto_config.prediction_type, latents, noise, timesteps)
        prediction = module(noisy, timesteps, text, conditioning, **content)
        return F.mse_loss(prediction.float(), target.float())

    # -- checkpoints, validation, export --

    def save(self) -> None:
        from accelerate.utils import gather_object

        rng = gather_object([rng_state()])
        state = {
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "thresholds": list(self.thresholds),
            "config": self.config.to_dict(),
            "rng": rng,
            "processes": self.world,
            "strategy": self.strategy,
        }
        if self.accelerator.scaler is not None:
            state["grad_scaler"] = self.accelerator.scaler.state_dict()
        ema = self.ema.shadow if self.ema else None
        if self.strategy == "fsdp":
            path = save_sharded_checkpoint(self.checkpoints_dir, self.step, self.accelerator, ema, state)
        elif self.main:
            path = save_checkpoint(self.checkpoints_dir, self.step, dict(self.named), ema,
                                   self.optimizer.state_dict(), state)
        if self.main:
            prune_checkpoints(self.checkpoints_dir, self.config.keep_checkpoints)
            self.log({"event": "checkpoint", "step": self.step, "path": str(path)}, f"step {self.step}: saved {path.name}")
        self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def trained_weights(self):
        """Context yielding, on the main process, a Trainee that holds the weights to validate and
        export (the EMA's, when kept); None on the others. Every process enters it (FSDP gathers).

        DDP: the trained module itself, the EMA swapped in for the block. FSDP: the main process's
        CPU copy, the weights gathered into it from every process's shards."""
        if self.strategy == "ddp":
            if not self.main:
                yield None
                return
            with self.ema.applied(self.named) if self.ema is not None else contextlib.nullcontext():
                yield self.unwrapped
            return
        whole = gather_to_main(self.ema.shadow if self.ema is not None else self.named, self.main)
        if not self.main:
            yield None
            return
        with torch.no_grad():
            for name, param in trainee_parameters(self.host).items():
                param.copy_(whole[name])
        yield self.host

    def validate(self) -> None:
        config = self.config.validation
        with self.trained_weights() as module:
            if self.main:
                # Under FSDP the main process's CPU copy goes to the device for the pass (on a GPU: a
                # whole model beside the shards, for the length of the validation).
                self.validate_with(module.to(self.device), config)
                if self.host is not None:
                    module.to("cpu")
        self.accelerator.wait_for_everyone()

    def validate_with(self, module: Trainee, config) -> None:
        """The main process's validation on `module` (a Trainee holding the weights to validate)."""
        record = {"event": "validation", "step": self.step}
        module.eval()
        if self.validation_sample is not None:
            path = self.output_dir / "validation" / f"{checkpoint_name(self.step)}.png"
            path.parent.mkdir(exist_ok=True)
            path.unlink(missing_ok=True)  # rendered again after a resume: same weights, same picture
            text_encoder = module.text_encoder if module.text_encoder is not None else self.text_encoder
            pipeline = LivePhotoPipeline(
                module.model, self.vae, text_encoder, self.base.tokenizer, self.base.scheduler_config
            )
            record["levels"] = render_validation(pipeline, self.validation_sample, config, path)
            record["strip"] = str(path)
        if self.heldout:
            record["heldout_loss"] = self.heldout_loss(module)
        module.train()
        measured = ", ".join(f"{r['level']}->{r['measured']}" for r in record.get("levels", []))
        self.log(record, f"step {self.step}: validation, intensity asked->measured {measured or '-'}"
                 + (f", held-out loss {record['heldout_loss']:.4f}" if "heldout_loss" in record else ""))

    @torch.no_grad()
    def heldout_loss(self, module: nn.Module) -> float:
        """Mean loss over the held-out clips, each at the same noise and timestep every time."""
        seed = self.config.validation.seed
        return float(np.mean([
            self.loss(batch, [clip_generator(seed, 0, i, HELDOUT_STREAM)], 0.0, module).item()
            for i, batch in enumerate(self.heldout)
        ]))

    def load_heldout(self) -> list[dict]:
        """The first validation.loss_clips decodable clips of the validation index, as batches of one."""
        config = self.config
        clips = []
        if not self.main or not config.validation.loss_clips or config.data.validation_index is None:
            return clips
        for entry in read_index(config.data.validation_index, config.data.root):
            if len(clips) == config.validation.loss_clips:
                break
            try:
                clip = load_clip(entry.path, self.sampling)
            except Exception:  # noqa: BLE001 - an unreadable held-out video: take the next one
                continue
            frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float()[None] / 127.5 - 1.0
            level = level_from_ssim(mean_adjacent_ssim(clip), self.thresholds)
            clips.append({"frames": frames, "reference": frames[:, 0], "caption": [entry.caption],
                          "level": torch.tensor([level])})
        return clips

    def export(self) -> Path | None:
        from accelerate.utils import broadcast_object_list

        folder = self.output_dir / "export" / checkpoint_name(self.step)
        # The main process decides; under FSDP every process then takes part in gathering the weights.
        [wanted] = broadcast_object_list([self.step > 0 and not folder.exists()])
        if wanted:
            with self.trained_weights() as module:
                if self.main:
                    model = module.model
                    model.config.extra = {
                        "training": {"steps": self.step, "index": self.config.data.index,
                                     "usable_videos": self.data_counts["usable"], "base_hashes": self.base.hashes,
                                     "livephoto_version": __version__, "config": self.config.to_dict()}
                    }
                    # A bundled export writes DINOv2 and the text encoder too: under FSDP the live ones are
                    # sharded, so take them from the module that holds the whole weights.
                    text_encoder = module.text_encoder if module.text_encoder is not None else self.base.text_encoder
                    base = dataclasses.replace(self.base, dinov2=model.content_encoder.dinov2,
                                               text_encoder=text_encoder)
                    export_model(model, base, folder)
            self.log({"event": "export", "step": self.step, "path": str(folder)}, f"exported {folder}")
        self.accelerator.wait_for_everyone()
        return folder if folder.exists() else None

    # -- the loop --

    def run(self) -> TrainResult:
        from accelerate.state import AcceleratorState

        threads = torch.get_num_threads()
        if self.config.torch_threads is not None:
            torch.set_num_threads(self.config.torch_threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)
            self.accelerator.end_training()  # ends the process group of a multi-process run
            # accelerate keeps one state per process; clear it so that a later run in this process
            # (a notebook, the tests) may choose another precision.
            AcceleratorState._reset_state(reset_partial_state=True)

    def out_of_time(self) -> bool:
        limit = self.config.time_limit_minutes
        return limit is not None and time.perf_counter() - self.started > 60 * limit

    def _run(self) -> TrainResult:
        config = self.config
        self.prepare_data()
        try:
            self.prepare_model()
        except TimeLimitReached:
            self.log({"event": "stop", "reason": "time limit", "stage": "vae"},
                     f"stopping in the VAE stage: time limit of {config.time_limit_minutes} minutes reached; "
                     f"continue with --resume latest")
            return TrainResult(self.output_dir, 0, stopped_early=True)
        result = TrainResult(self.output_dir, self.step)
        if self.export_only:
            result.export = self.export()
            return result
        self.validation_sample = (
            validation_sample(config.validation, config.data.validation_index, config.data.root, self.sampling)
            if self.main else None
        )
        self.heldout = self.load_heldout()
        if self.step >= config.steps:
            self.log({"event": "stop", "reason": "already trained", "step": self.step},
                     f"already at step {self.step} of {config.steps}")
        else:
            self.loop(result)
        if result.losses and not result.stopped_early:
            self.validate()
        result.export = self.export()
        return result

    def loop(self, result: TrainResult) -> None:
        config, accelerator = self.config, self.accelerator
        accumulation = config.gradient_accumulation_steps
        clips_per_step = config.batch_size * accumulation * self.world
        stream = ClipStream(self.dataset, config.batch_size, config.seed, self.rank, self.world,
                            config.data.loader_workers)
        window = Window()
        micro_losses = []
        step_started = data_started = time.perf_counter()
        for epoch, positions, batch in stream(self.step * accumulation):
            window.data += time.perf_counter() - data_started
            model_started = time.perf_counter()
            with accelerator.accumulate(self.trainee):
                generators = [clip_generator(config.seed, epoch, p) for p in positions]
                loss = self.loss(batch, generators, config.text_dropout, self.trainee)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(list(self.named.values()), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())
            window.replaced += int(batch["replaced"].sum())
            window.model += time.perf_counter() - model_started
            data_started = time.perf_counter()
            if not accelerator.sync_gradients:
                continue

            self.lr_scheduler.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.named, self.step)
            step_loss = accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean").item()
            micro_losses = []
            seconds = time.perf_counter() - step_started
            result.losses[self.step] = step_loss
            result.step = self.step
            lr = self.lr_scheduler.get_last_lr()[0]
            self.log({"event": "step", "step": self.step, "epoch": epoch, "loss": step_loss, "lr": lr,
                      "s_per_step": seconds, "clips_per_s": clips_per_step / seconds})
            window.add(step_loss, seconds)
            finished = self.step >= config.steps
            if self.step % config.log_every == 0 or finished:
                self.log({"event": "progress", "step": self.step, **window.summary(clips_per_step)},
                         f"step {self.step}/{config.steps} epoch {epoch} loss {window.loss / window.count:.4f} "
                         f"lr {lr:.2e} {window.clips_per_s(clips_per_step):.2f} clips/s "
                         f"(s/step: data {window.data / window.count:.3f}, model {window.model / window.count:.3f})")
                window = Window()
            limit = config.time_limit_minutes
            if self.out_of_time():
                accelerator.set_trigger()
            out_of_time = accelerator.check_trigger() and not finished
            if config.validation.every and self.step % config.validation.every == 0 and not finished:
                self.validate()
            if self.step % config.checkpoint_every == 0 or finished or out_of_time:
                self.save()
            if out_of_time:
                result.stopped_early = True
                self.log({"event": "stop", "reason": "time limit", "step": self.step},
                         f"stopping at step {self.step}: time limit of {limit} minutes reached")
            if finished or out_of_time:
                return
            step_started = data_started = time.perf_counter()  # s/step leaves out validation and saving


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed


def trainee_parameters(trainee: nn.Module) -> dict[str, nn.Parameter]:
    return {name: param for name, param in trainee.named_parameters() if param.requires_grad}


def train(config: TrainConfig, resume: str | None = None, export_only: bool = False) -> TrainResult:
    """Run (or, with resume="latest" or a checkpoint folder, continue) the training `config` describes;
    with export_only, export the checkpoint `resume` names instead."""
    return Trainer(config, resume, export_only).run()
