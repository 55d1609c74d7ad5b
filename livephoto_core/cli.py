"""`livephoto`: animate a photo, measure a video's motion intensity, inspect a weights file.

Heavy imports (torch, diffusers) happen inside the commands, so `livephoto --help` is instant.
Every user error is one line on stderr and exit status 2; Ctrl-C exits 130 and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .defaults import (
    DEFAULT_CONTENT_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INTENSITY,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    DEFAULT_WINDOW_SCHEDULE,
    MAX_DECODED_FRAMES,
    MAX_FRAME_PIXELS,
    WINDOW_SCHEDULES,
)
from .wan.defaults import (
    WAN_DEFAULT_ALPHA,
    WAN_DEFAULT_GUIDANCE,
    WAN_DEFAULT_INTENSITY,
    WAN_DEFAULT_STEPS,
    WAN_MAX_ALPHA,
    WAN_MAX_INTENSITY,
    WAN_MIN_ALPHA,
)

EXIT_USAGE, EXIT_CANCELLED = 2, 130
BATCH_FORMATS = ("webp", "gif", "mp4", "MP.jpg", "livephoto")
# The arguments that leave a batch's videos as they are, or reach their names another way (each row's
# photo, prompt, intensity and seed; the format's suffix). Every other flag goes into the videos' names,
# so a rerun with other settings writes new videos instead of skipping, and a flag added later does too.
NOT_IN_VIDEO_NAMES = frozenset({
    "command", "run", "inputs", "manifest", "output", "output_dir", "format", "overwrite", "device", "low_memory",
    "intensity", "seed",
    # LivePhoto-Wan2.1 renders one video a run, so these are never set in a batch; leaving them out keeps the
    # names of SD-1.5 batches what they were before Wan came.
    "wan_dit", "wan_lora", "wan_base", "lora_alpha",
})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livephoto",
        description="LivePhoto: animate a photo from a text motion description at a chosen intensity, with the "
        "SD-1.5 model (the bundled demo or your checkpoint) or the authors' LivePhoto-Wan2.1 (--wan-dit).",
    )
    parser.add_argument("--version", action="version", version=f"livephoto {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    animate = commands.add_parser(
        "animate",
        help="animate a photo (or several)",
        usage="livephoto animate [options] IMAGE [IMAGE ...] PROMPT\n"
              "       livephoto animate [options] --manifest ROWS.csv",
        description="Animate IMAGE as PROMPT describes. Several photos, or a PROMPT of several lines (one prompt a "
        "line), give one video per pair: one photo with each prompt, each photo with the one prompt, or photo k with "
        "prompt k when there are as many. A manifest gives one video per row. With no model options it runs the "
        "bundled demo model (trained on the toy world of shapes: try 'the red circle moves to the left'). With "
        "--wan-dit it runs the authors' LivePhoto-Wan2.1 (one photo and one prompt; see docs/wan.md).",
    )
    animate.add_argument("inputs", nargs="*", metavar="IMAGE ... PROMPT",
                         help='the photo or photos (PNG, JPEG, WebP, ...), then the motion, e.g. "shaking head" or '
                              '"camera zooms in"; several lines are several prompts')
    animate.add_argument("--manifest", metavar="ROWS.csv",
                         help="instead of IMAGE and PROMPT: a CSV file whose header names the columns photo,prompt,"
                              "intensity,seed, one video per row (photo paths relative to the file; empty intensity "
                              "and seed cells take --intensity and --seed). Rows already written are skipped, so a "
                              "rerun resumes; under `accelerate launch` each process renders its share of the rows")
    animate.add_argument("--intensity",
                         help=f"motion intensity; the range depends on the model family. SD-1.5 models: 1 (still) to 10 "
                              f"(most), or a schedule of LEVEL:FRAME keyframes, linear in between, e.g. 2:0,8:31; "
                              f"default: the model's ({DEFAULT_INTENSITY} for the demo model). LivePhoto-Wan2.1: one "
                              f"level, 1 to {WAN_MAX_INTENSITY} (default {WAN_DEFAULT_INTENSITY})")
    animate.add_argument("--seed", type=int, help="random seed (default: a new one, printed and stored in the output)")
    animate.add_argument("--frames", type=int, help="number of frames, up to 512 (default: what the model was trained "
                         "with); more than one window are sampled as overlapping windows")
    animate.add_argument("--window-length", type=int, help="frames the motion modules see at once (default: what the "
                         "model was trained with, 8 for the demo model; at most what its motion modules handle)")
    animate.add_argument("--window-overlap", type=int, help="frames neighbouring windows share (default: half the window)")
    animate.add_argument("--window-schedule", default=DEFAULT_WINDOW_SCHEDULE, choices=WINDOW_SCHEDULES,
                         help=f"static: the same windows every step; uniform: windows shifted each step so no seam stays "
                              f"put (default {DEFAULT_WINDOW_SCHEDULE})")
    animate.add_argument("--loop", action="store_true", help="a seamless loop: the last frame flows into the first "
                         "(needs more frames than one window)")
    animate.add_argument("--steps", type=int,
                         help=f"denoising steps (default {DEFAULT_STEPS}; LivePhoto-Wan2.1: {WAN_DEFAULT_STEPS})")
    animate.add_argument("--guidance", type=float,
                         help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE_SCALE}; LivePhoto-Wan2.1: "
                              f"{WAN_DEFAULT_GUIDANCE:g}, for both its text and its intensity guidance)")
    animate.add_argument("--negative", help="negative prompt (default: none; LivePhoto-Wan2.1: Wan's standard one)")
    animate.add_argument("--scheduler", default=DEFAULT_SCHEDULER,
                         help=f"the denoising schedule (default {DEFAULT_SCHEDULER}): dpmpp_2m, ddim, unipc, euler, "
                              f"euler_ancestral, ...")
    animate.add_argument("--content-scale", type=float, default=DEFAULT_CONTENT_SCALE,
                         help=f"strength of the photo's DINOv2 tokens (default {DEFAULT_CONTENT_SCALE:g})")
    animate.add_argument("--no-inversion", action="store_true", help="start from pure noise instead of the inverted photo")
    animate.add_argument("--low-memory", action=argparse.BooleanOptionalAction, default=None,
                         help="a lower peak at about the same speed: idle parts wait off the device, smaller batches "
                              "(full-size fp32 on a CPU: 7.2 GB instead of 9.5 GB); default: chosen when a render "
                              "would not fit in the free memory, and said so")
    animate.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), help="output size (default: the model's)")
    animate.add_argument("-o", "--output", help="output file of one video, .webp, .gif or .mp4, or for a phone "
                         "NAME.MP.jpg (Android Motion Photo) or NAME.livephoto (Apple Live Photo: NAME.jpg + NAME.mov); "
                         "default: IMAGE_livephoto.webp")
    animate.add_argument("--output-dir", metavar="DIR",
                         help="folder of the videos of a batch (several photos, prompts or a manifest), each named "
                              "ROW-PHOTO-HASH.FORMAT from its row and settings (default: the current folder)")
    animate.add_argument("--format", choices=BATCH_FORMATS,
                         help="file type of the videos of a batch (default webp); one video takes -o's extension")
    animate.add_argument("--overwrite", action="store_true", help="replace output files that exist (a batch: render "
                         "rows already written again)")
    animate.add_argument("--fps", type=float, help="playback rate of the output (default: the model's, 8 for the demo "
                         "model); the frames are the same, only their timing changes")
    animate.add_argument("--ping-pong", action="store_true", help="play the frames forward then back, for a loop "
                         "with no jump (2F - 2 frames)")
    animate.add_argument("--base", help="SD-1.5 base: a single .safetensors/.ckpt file or a diffusers folder")
    animate.add_argument("--livephoto", help="LivePhoto checkpoint (.safetensors); default: the bundled demo model")
    animate.add_argument("--motion-module", help="AnimateDiff motion module, for checkpoints trained on a frozen one")
    animate.add_argument("--dinov2", help="DINOv2: a transformers folder or a .safetensors file")
    animate.add_argument("--tokenizer", help="a folder with CLIP's vocab.json and merges.txt (for single-file bases)")
    animate.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    animate.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"),
                         help="default auto: float16 on CUDA, bfloat16 on a CPU that computes it natively (AMX or "
                              "AVX512-BF16), else float32; LivePhoto-Wan2.1: bfloat16, as its authors run it")
    wan = animate.add_argument_group(
        "LivePhoto-Wan2.1", "the authors' released model (hub: shirley430316/LivePhoto-Wan2.1) on Wan2.1-T2V-1.3B; "
        "81 frames at 480 x 832 and 25 fps by default")
    wan.add_argument("--wan-dit", metavar="base.safetensors", help="the LivePhoto-Wan2.1 DiT, base.safetensors")
    wan.add_argument("--wan-lora", metavar="lora.safetensors", help="its LoRA, lora.safetensors (merged at --lora-alpha)")
    wan.add_argument("--wan-base", metavar="FOLDER", help="Wan2.1-T2V-1.3B in diffusers layout (the hub's "
                     "Wan-AI/Wan2.1-T2V-1.3B-Diffusers): its umT5 text encoder, tokenizer and VAE")
    wan.add_argument("--lora-alpha", type=float, help=f"LoRA strength, {WAN_MIN_ALPHA:g} to {WAN_MAX_ALPHA:g} (default "
                     f"{WAN_DEFAULT_ALPHA:g}; the authors use 1.2 to 1.4)")
    animate.set_defaults(run=run_animate)

    intensity = commands.add_parser(
        "intensity", help="measure a video's motion intensity",
        description=f"Mean SSIM of adjacent frames and its level. The video is read a frame at a time, so memory does "
                    f"not grow with its length; frames may have up to {MAX_FRAME_PIXELS:,} pixels (4096x2304: 4K "
                    f"fits); a video of more than {MAX_DECODED_FRAMES:,} frames is measured on its first --max-frames.",
    )
    intensity.add_argument("video", help="any video PyAV decodes (mp4, webm, gif, webp, ...)")
    intensity.add_argument("--livephoto", help="take the level thresholds from this checkpoint (default: built-in)")
    intensity.add_argument("--max-frames", type=int,
                           help=f"measure the first N frames only (default: all; needed beyond {MAX_DECODED_FRAMES:,})")
    intensity.set_defaults(run=run_intensity)

    inspect = commands.add_parser("inspect", help="say what kind of weights a file holds")
    inspect.add_argument("file", help="a weights file or model folder")
    inspect.set_defaults(run=run_inspect)
    return parser


def default_output(image) -> Path:
    return Path(image).with_name(Path(image).stem + "_livephoto.webp")


def run_animate(args) -> int:
    if any(value is not None for value in (args.wan_dit, args.wan_lora, args.wan_base, args.lora_alpha)):
        return run_wan_animate(args)
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.guidance = DEFAULT_GUIDANCE_SCALE if args.guidance is None else args.guidance
    args.negative = "" if args.negative is None else args.negative
    args.dtype = args.dtype or "auto"
    rows = animate_rows(args)
    if args.manifest is None and len(rows) == 1:
        return animate_one(args, rows[0])
    return animate_batch(args, rows)


# SD-1.5 options that mean nothing to LivePhoto-Wan2.1 (args name -> flag).
WAN_UNUSED = {"manifest": "--manifest", "livephoto": "--livephoto", "base": "--base", "motion_module": "--motion-module",
              "dinov2": "--dinov2", "tokenizer": "--tokenizer", "window_length": "--window-length",
              "window_overlap": "--window-overlap", "output_dir": "--output-dir", "format": "--format"}
WAN_UNUSED_SWITCHES = {"loop": "--loop", "no_inversion": "--no-inversion", "low_memory": "--low-memory"}


def run_wan_animate(args) -> int:
    """One photo and one prompt through the authors' LivePhoto-Wan2.1; everything that needs no weights is
    checked first, the two weight files from their headers, so a wrong file fails in milliseconds."""
    import random

    from .checks import check_device, check_fps, check_guidance, check_seed, check_steps, check_text
    from .errors import InvalidInputError
    from .images import load_image
    from .loading.files import check_weight_file
    from .video import check_output
    from .wan import pipeline as wan

    unused = [flag for name, flag in WAN_UNUSED.items() if getattr(args, name) is not None]
    unused += [flag for name, flag in WAN_UNUSED_SWITCHES.items() if getattr(args, name)]
    if unused:
        raise InvalidInputError(f"{', '.join(unused)}: not used by LivePhoto-Wan2.1 (--wan-dit); leave "
                                f"{'it' if len(unused) == 1 else 'them'} out")
    for flag, value in (("--wan-dit", args.wan_dit), ("--wan-lora", args.wan_lora), ("--wan-base", args.wan_base)):
        if value is None:
            raise InvalidInputError(f"LivePhoto-Wan2.1 needs --wan-dit base.safetensors, --wan-lora lora.safetensors "
                                    f"and --wan-base FOLDER; {flag} is missing (docs/wan.md says where to get them)")
    if len(args.inputs) != 2:
        raise InvalidInputError("LivePhoto-Wan2.1 animates one photo with one prompt: livephoto animate IMAGE PROMPT "
                                "--wan-dit ... (batches come later)")
    photo_path, prompt = args.inputs
    if "\n" in prompt.strip():
        raise InvalidInputError("LivePhoto-Wan2.1 takes one prompt a run; give a single line")
    output = Path(args.output) if args.output else default_output(photo_path)
    check_output(output, args.overwrite)
    intensity = wan.check_intensity(WAN_DEFAULT_INTENSITY if args.intensity is None else args.intensity)
    alpha = wan.check_lora_alpha(WAN_DEFAULT_ALPHA if args.lora_alpha is None else args.lora_alpha)
    frames = wan.check_wan_frames(wan.DEFAULT_FRAMES if args.frames is None else args.frames)
    height, width = wan.check_wan_size(*(args.size or (wan.DEFAULT_HEIGHT, wan.DEFAULT_WIDTH)))
    steps = check_steps(WAN_DEFAULT_STEPS if args.steps is None else args.steps)
    guidance = check_guidance(WAN_DEFAULT_GUIDANCE if args.guidance is None else args.guidance)
    negative = check_text(wan.DEFAULT_NEGATIVE if args.negative is None else args.negative, "negative prompt")
    check_text(prompt)
    seed = random.SystemRandom().randrange(2**31) if args.seed is None else check_seed(args.seed)
    if args.fps is not None:
        check_fps(args.fps)
    check_device(args.device)
    wan.check_wan_folder(args.wan_base)
    from .wan.keys import check_wan_base
    from .wan.lora import check_lora_file

    check_lora_file(check_weight_file(args.wan_lora), check_wan_base(args.wan_dit))
    photo = load_image(photo_path)

    import torch

    wan_dtype = "bfloat16" if args.dtype in (None, "auto") else args.dtype  # auto: as the authors run it
    quiet_library_progress()
    with ProgressBar() as progress:
        result = wan.animate_wan(
            photo, prompt, dit=args.wan_dit, base_folder=args.wan_base, lora=args.wan_lora, lora_alpha=alpha,
            intensity=intensity, negative_prompt=negative, steps=steps, guidance=guidance, num_frames=frames,
            height=height, width=width, seed=seed, device=args.device, dtype=getattr(torch, wan_dtype),
            status=status, callback=lambda step, total: progress(SamplingStep("sampling", step, total)),
        )
    count, fps = write_frames(args, result.frames, result.settings, output, Path(photo_path))
    print(f"wrote {output} ({count} frames at {fps:g} fps, seed {seed}, intensity {intensity} of "
          f"{WAN_MAX_INTENSITY}, LivePhoto-Wan2.1)")
    return 0


class SamplingStep:
    """What ProgressBar reads from the SD pipeline's callback events."""

    def __init__(self, phase: str, step: int, total: int):
        self.phase, self.step, self.total = phase, step, total


def write_frames(args, frames, settings: dict, output: Path, photo: Path) -> tuple[int, float]:
    """The video at the asked fps (default the model's), ping-ponged if asked, with its settings as metadata;
    a phone format's still is the photo itself, at its own resolution. -> (frames written, fps)."""
    from .phone import phone_format
    from .video import ping_pong, write_video

    fps = settings["fps"] if args.fps is None else args.fps
    frames = ping_pong(frames) if args.ping_pong else frames
    metadata = {**settings, "playback_fps": fps, "ping_pong": args.ping_pong}
    write_video(frames, output, fps=fps, metadata=metadata, overwrite=args.overwrite,
                still=photo if phone_format(output) else None)
    return len(frames), fps


def animate_rows(args):
    """The videos asked for: IMAGE ... PROMPT paired by the batch rule, or the manifest's rows."""
    from .batch import batch_rows, read_manifest
    from .errors import InvalidInputError

    if args.manifest is not None:
        if args.inputs:
            raise InvalidInputError(f"give IMAGE and PROMPT or --manifest, not both (got {' '.join(args.inputs)} "
                                    f"and --manifest {args.manifest})")
        return read_manifest(args.manifest)
    if len(args.inputs) < 2:
        raise InvalidInputError("animate needs a photo and a prompt: livephoto animate IMAGE [IMAGE ...] PROMPT, or "
                                "livephoto animate --manifest ROWS.csv")
    *photos, prompt = args.inputs
    if names_a_file(prompt):  # `animate a.png b.png`: no prompt, not the prompt "b.png"
        raise InvalidInputError(f"the last argument is the prompt, and {prompt} is a file: give the prompt after the "
                                f"photos, livephoto animate IMAGE [IMAGE ...] PROMPT")
    return batch_rows(photos, prompt)


def names_a_file(text: str) -> bool:
    try:
        return "\n" not in text and Path(text).is_file()
    except OSError:  # too long for a file name (is_file lets ENAMETOOLONG through): a prompt
        return False


def animate_one(args, row) -> int:
    """One photo, one prompt: the video goes to -o (default IMAGE_livephoto.webp); an existing one is refused."""
    from .errors import InvalidInputError
    from .images import load_image
    from .video import check_output

    if args.output_dir is not None or args.format is not None:
        raise InvalidInputError("--output-dir and --format are for a batch of videos; name the one video with -o")
    output = Path(args.output) if args.output else default_output(row.photo)
    check_output(output, args.overwrite)
    config, frames = check_before_loading(args)
    intensity = row_intensity(args.intensity, config, frames)
    photo = load_image(row.photo)
    pipe = load_model(args, args.device)
    render_and_write(pipe, args, row, intensity, args.intensity, args.seed, output, photo, "")
    return 0


def animate_batch(args, rows) -> int:
    """A video per row, in --output-dir, named from the row (``batch.row_output_name``): rows whose video is
    already there are skipped (a rerun resumes); under several processes each renders its share."""
    from .batch import row_output_name
    from .errors import InvalidInputError
    from .images import load_image
    from .phone import written_files
    from .video import check_output

    if args.output is not None:
        raise InvalidInputError(f"-o names one video and this batch makes {len(rows)}; give --output-dir (and "
                                f"--format) instead")
    config, frames = check_before_loading(args)
    folder = Path(args.output_dir or ".")
    suffix = "." + (args.format or "webp")
    settings = {name: value for name, value in vars(args).items() if name not in NOT_IN_VIDEO_NAMES}
    videos = []
    for row in rows:
        asked = row.intensity or args.intensity
        try:
            intensity = row_intensity(asked, config, frames)
        except InvalidInputError as error:
            raise InvalidInputError(f"{row.where}: {error}") from None
        seed = args.seed if row.seed is None else row.seed
        videos.append((row, intensity, asked, seed, folder / row_output_name(row, asked, seed, settings, suffix)))

    share, process = process_share(videos)
    prefix = "" if process is None else f"[process {process.process_index + 1} of {process.num_processes}] "
    to_render = []
    for video in share:
        row, output = video[0], video[-1]
        if not args.overwrite and all(path.exists() for path in written_files(output)):
            report(f"{prefix}skipped {row.where}: {output} is already written")
        else:
            check_output(output, args.overwrite)
            to_render.append(video)
    if to_render:
        device = args.device
        if process is not None and device == "cuda":  # one GPU per process
            device = f"cuda:{process.local_process_index}"
        pipe = load_model(args, device)
        for row, intensity, asked, seed, output in to_render:
            render_and_write(pipe, args, row, intensity, asked, seed, output, load_image(row.photo),
                             f"{prefix}{row.where} ({row.photo.name}, {row.prompt!r}): ")
    return 0


def process_share(videos: list) -> tuple[list, object]:
    """This process's videos, and accelerate's PartialState, under `accelerate launch` with several processes
    (accelerate's split: consecutive rows, the first processes one more where they do not divide evenly);
    all of them and None otherwise. accelerate is imported only then: it is an optional dependency."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return videos, None
    import torch
    from accelerate import PartialState

    # Without CUDA (accelerate launch --multi_gpu, or torchrun, on a CPU machine) accelerate counts the
    # processes only when told they run on the CPU, as the training engine tells it.
    process = PartialState(cpu=not torch.cuda.is_available())
    with process.split_between_processes(videos) as share:
        return list(share), process


def load_model(args, device: str):
    from .loading.assemble import load_pipeline
    from .precision import resolve_dtype

    quiet_library_progress()
    dtype = resolve_dtype(args.dtype, device)
    named = str(dtype).removeprefix("torch.")
    auto = " (--dtype auto; --dtype float32 for full precision)" if args.dtype == "auto" and named != "float32" else ""
    status(f"loading {'the demo model' if args.livephoto is None else args.livephoto} in {named}{auto} ...")
    pipe = load_pipeline(
        args.livephoto, args.base, args.motion_module, args.dinov2, args.tokenizer,
        device=device, dtype=dtype, low_memory=args.low_memory,
    )
    return pipe


def render_and_write(pipe, args, row, intensity, asked, seed, output: Path, photo, prefix: str) -> None:
    """Render one row and write its video; `asked`: the intensity as written, `prefix` starts the lines
    printed (which video of a batch this is)."""
    from .phone import written_files

    height, width = args.size or (None, None)
    with ProgressBar() as progress:
        result = pipe(
            photo, row.prompt, intensity=intensity, num_frames=args.frames, num_inference_steps=args.steps,
            guidance_scale=args.guidance, negative_prompt=args.negative, seed=seed, height=height, width=width,
            content_scale=args.content_scale, prior_inversion=not args.no_inversion, scheduler=args.scheduler,
            window_length=args.window_length, window_overlap=args.window_overlap, window_schedule=args.window_schedule,
            loop=args.loop, callback=progress,
        )
    for note in result.notes:
        status(note)
    metadata = {**result.settings, "measured_intensity": result.intensity.level,
                "measured_mean_ssim": result.intensity.mean_ssim,
                "token_weights": [[token, round(weight, 4)] for token, weight in result.token_weights]}
    count, fps = write_frames(args, result.frames, metadata, output, row.photo)
    weights = " ".join(f"{token}:{weight:.2f}" for token, weight in result.token_weights)
    report(f"{prefix}wrote {' + '.join(map(str, written_files(output)))} ({count} frames at {fps:g} fps, "
           f"seed {result.settings['seed']}, asked intensity {asked if isinstance(intensity, tuple) else intensity}, "
           f"measured {result.intensity.level} (mean SSIM {result.intensity.mean_ssim:.3f}))\n"
           f"{prefix}token weights: {weights}")


def row_intensity(asked: str | None, config, frames: int):
    """The intensity as written (a level or a schedule; None: the model's default) -> a level or one per frame."""
    from .intensity import intensity_from_text

    return intensity_from_text(str(config.default_intensity) if asked is None else asked, frames,
                               config.intensity_levels)


def check_before_loading(args):
    """The settings that need no model weights (frames: the checkpoint's header), checked before the
    loading, which takes a while for real models. The pipeline checks the settings again; the prompt's
    length needs the model's tokenizer and is checked once it is loaded. -> (the checkpoint's config, frames)."""
    from .checks import (
        check_content_scale,
        check_device,
        check_fps,
        check_frames,
        check_guidance,
        check_seed,
        check_size,
        check_steps,
        check_text,
    )
    from .loading.assemble import demo_checkpoint
    from .loading.checkpoint import read_livephoto_config
    from .sampling import check_scheduler_name
    from .windows import context_windows

    check_text(args.negative, "negative prompt")
    check_device(args.device)
    check_scheduler_name(args.scheduler)
    config = read_livephoto_config(args.livephoto if args.livephoto is not None else demo_checkpoint())
    frames = check_frames(config.num_frames if args.frames is None else args.frames)
    row_intensity(args.intensity, config, frames)
    context_windows(frames, config.motion_max_seq_length, config.num_frames, args.window_length, args.window_overlap,
                    args.window_schedule, args.loop)
    check_steps(args.steps)
    check_guidance(args.guidance)
    check_content_scale(args.content_scale)
    if args.seed is not None:
        check_seed(args.seed)
    if args.size is not None:
        check_size(*args.size)
    if args.fps is not None:
        check_fps(args.fps)
    return config, frames


def run_intensity(args) -> int:
    """Streams the video a frame at a time (``video.iter_frames`` into ``intensity.AdjacentSSIM``): memory
    does not grow with the clip's length."""
    from .errors import InvalidInputError
    from .intensity import DEFAULT_THRESHOLDS, LEVELS, AdjacentSSIM, level_from_ssim
    from .video import iter_frames

    if args.max_frames is not None and args.max_frames < 2:
        raise InvalidInputError(f"--max-frames must be 2 or more (adjacent frames are compared); got {args.max_frames}")
    thresholds = DEFAULT_THRESHOLDS
    if args.livephoto:
        from .loading.checkpoint import read_livephoto_config

        thresholds = read_livephoto_config(args.livephoto).intensity_thresholds
    meter = AdjacentSSIM()
    for frame in iter_frames(args.video, max_frames=args.max_frames):
        meter.add(frame[None])
    if meter.frames < 2:
        raise InvalidInputError(
            f"{args.video} holds one frame; motion intensity compares adjacent frames: pass a video of 2 frames or more"
        )
    mean_ssim = meter.mean()
    source = "checkpoint" if args.livephoto else "built-in default"
    print(f"{args.video}: {meter.frames} frames, mean adjacent SSIM {mean_ssim:.4f}, "
          f"intensity level {level_from_ssim(mean_ssim, thresholds)} of {LEVELS} ({source} thresholds)")
    return 0


def run_inspect(args) -> int:
    """Exit 0 for any readable file, naming its kind ("unknown" included) and, for a LivePhoto checkpoint,
    its config; exit 2 for a missing, empty, corrupt, truncated or unsafe one."""
    from .config import FORMAT_VERSION, METADATA_KEY
    from .loading.detect import detect_path, with_article
    from .loading.files import WEIGHT_SUFFIXES, read_safetensors_metadata
    from .loading.schema import parse_json

    path = Path(args.file)
    if path.is_file() and path.stat().st_size and path.suffix.lower() not in WEIGHT_SUFFIXES:
        print(f"{args.file}: unknown (not a weights file; LivePhoto reads {', '.join(WEIGHT_SUFFIXES)})")
        return 0
    found = detect_path(path)
    named = f"unknown ({found.description})" if found.kind == "unknown" else with_article(found.description)
    print(f"{args.file}: {named}")
    if found.kind == "livephoto" and found.details["format_version"] is not None:
        details = parse_json(read_safetensors_metadata(path)[METADATA_KEY], f"{args.file}: the LivePhoto config")
        if found.details["format_version"] != FORMAT_VERSION:
            print(f"  (this livephoto reads format {FORMAT_VERSION}: re-export it with a matching livephoto version)")
    else:
        details = found.details
    for key, value in sorted(details.items()):
        print(f"  {key}: {value}")
    return 0


class ProgressBar:
    """A tqdm bar per phase (inversion, sampling) on stderr, fed by the pipeline's callback."""

    def __enter__(self):
        self.bar, self.phase = None, None
        return self

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.phase != self.phase:
            self.close()
            self.phase = event.phase
            self.bar = tqdm(total=event.total, desc=event.phase, unit="step", file=sys.stderr, leave=True)
        self.bar.update(event.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __exit__(self, *exc) -> None:
        self.close()


def quiet_library_progress() -> None:
    """Our own bars say what happens; transformers' and diffusers' per-file loading bars are noise here."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def status(message: str) -> None:
    print(message, file=sys.stderr)


def report(lines: str) -> None:
    """Print a result in one write, flushed: processes under `accelerate launch` share stdout, and where it
    is unbuffered (PYTHONUNBUFFERED) print writes the newline separately, so another process's line could
    land mid-line."""
    sys.stdout.write(lines + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        status("cancelled; nothing was written")
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into a line
        from .errors import LivePhotoError

        if isinstance(error, LivePhotoError):
            status(f"error: {error}")
            return EXIT_USAGE
        if isinstance(error, (OSError, MemoryError)):
            status(f"error: {error.__class__.__name__}: {error}")
            return 1
        if os.environ.get("LIVEPHOTO_DEBUG"):
            raise
        status(f"internal error: {error.__class__.__name__}: {error} (a bug: please report it; "
               f"LIVEPHOTO_DEBUG=1 shows the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
