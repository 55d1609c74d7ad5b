"""Which way does the training loss push the text reweighter's token weights?

For training clips of a toy data set, the gradient of the denoising loss (at the model's own
prediction type, timesteps drawn as the recipe recorded in the checkpoint draws them) with respect to a multiplier on each reweighted token, at 1. Grouped by word class: motion words, content
words (split by whether the caption's content conflicts with the clip), other words, and the padding
after the prompt. A negative mean says a larger weight lowers the loss; t is the mean over its
standard error. On a trained model, means near zero with |t| < 2 say the weights sit where this
loss is content: more training of the same recipe would not move that class's weights.

    python benchmarks/reweighter_gradient.py --data data/toy2/train --clips 384 --json benchmarks/results_reweighter_gradient.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.motion_control import CONTENT_WORDS, MOTION_WORDS, denoising_inputs, parse_models  # noqa: E402

CLASSES = ("motion words", "content words", "content words, conflicting", "other words", "padding")


def token_gradients(pipe, data: Path, clips: int, seed: int = 0) -> dict[str, list[float]]:
    import torch

    from livephoto_core.encoding import encode_text, tokenize
    from livephoto_core.sampling import make_scheduler
    from livephoto_core.training.batching import denoising_target, draw_timestep
    from livephoto_core.training.data import ClipSampling, load_clip

    model, config = pipe.model, pipe.config
    scheduler = make_scheduler("ddpm", pipe.scheduler_config, config.prediction_type)
    recipe = config.extra.get("training", {}).get("config", {})  # the run's own timestep draw, if recorded
    high_noise = recipe.get("high_noise_fraction", 0.0), recipe.get("high_noise_from", 0)
    sampling = ClipSampling(num_frames=config.num_frames, stride=1, size=config.height)
    generator = torch.Generator().manual_seed(seed)
    gradients = {name: [] for name in CLASSES}
    with open(data / "labels.jsonl") as handle:
        labels = [json.loads(line) for _, line in zip(range(clips), handle)]
    for label in labels:
        latents, channels, content = denoising_inputs(pipe, load_clip(data / label["path"], sampling))
        input_ids, tokens = tokenize(pipe.tokenizer, label["caption"])
        with torch.no_grad():
            reweighted, _ = model.reweight_text(encode_text(pipe.text_encoder, input_ids))
        multiplier = torch.ones(reweighted.shape[:2], requires_grad=True)
        timestep = draw_timestep(generator, scheduler.config.num_train_timesteps, *high_noise)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        noisy = scheduler.add_noise(latents, noise, timestep)
        target = denoising_target(scheduler, config.prediction_type, latents, noise, timestep)
        context = torch.cat([reweighted * multiplier[..., None], content], dim=1)
        loss = ((model.unet(noisy, timestep, context, channels) - target) ** 2).mean()
        loss.backward()
        grad = multiplier.grad[0]
        for position, token in enumerate(tokens, start=1):  # position 0: the start token
            if token in MOTION_WORDS:
                name = "motion words"
            elif token in CONTENT_WORDS:
                name = "content words, conflicting" if label["conflict"] else "content words"
            else:
                name = "other words"
            gradients[name].append(float(grad[position]))
        gradients["padding"].append(float(grad[1 + len(tokens):].sum()))
    return gradients


def summary(gradients: dict[str, list[float]]) -> dict[str, dict]:
    figures = {}
    for name, values in gradients.items():
        values = np.asarray(values)
        if len(values) < 2:
            continue
        error = values.std(ddof=1) / np.sqrt(len(values))
        figures[name] = {"count": len(values), "mean": float(values.mean()), "sd": float(values.std(ddof=1)),
                         "t": float(values.mean() / error) if error > 0 else 0.0}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="NAME=PATH of a LivePhoto checkpoint (repeatable)")
    parser.add_argument("--data", type=Path, required=True, help="a toy data set folder (with labels.jsonl)")
    parser.add_argument("--clips", type=int, default=256, help="clips to read (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    from livephoto_core.loading.assemble import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    for name, checkpoint in parse_models(args.model).items():
        figures = summary(token_gradients(load_pipeline(checkpoint), args.data, args.clips))
        results[name] = {"checkpoint": checkpoint, "classes": figures}
        for word_class, values in figures.items():
            print(f"{name}: {word_class:28s} n={values['count']:5d} mean {values['mean']:+.1e} "
                  f"sd {values['sd']:.1e} t {values['t']:+.1f}", flush=True)
    if args.json:
        record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "command": " ".join(["benchmarks/reweighter_gradient.py", *(argv if argv is not None else sys.argv[1:])]),
                  "models": results}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
