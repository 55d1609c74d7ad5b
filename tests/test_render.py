"""The render steps' interface: requests in, a prior or latents out, nothing left on the model."""

from dataclasses import replace

import pytest
import torch
from livephoto_core.testing.tiny import SD_SCHEDULER, TINY_UNET, tiny_model, train_livephoto_parts_

from livephoto_core.errors import InvalidInputError
from livephoto_core.render import (
    InversionRequest,
    PhotoConditioning,
    SamplingRequest,
    Schedule,
    generate_latents,
    invert_reference,
)

D = TINY_UNET["cross_attention_dim"]


@pytest.fixture(scope="module")
def model():
    return train_livephoto_parts_(tiny_model())


def photo(model) -> PhotoConditioning:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        content = model.encode_content(torch.rand(1, 3, 64, 64, generator=generator))
    return PhotoConditioning(reference_latent=torch.randn(1, 4, 8, 8, generator=generator), content=content,
                             intensity=6)


def schedule(name: str = "ddim", steps: int = 2) -> Schedule:
    return Schedule(scheduler=name, steps=steps, base_config=SD_SCHEDULER, prediction_type="epsilon")


def test_an_unknown_scheduler_is_refused_when_the_schedule_is_made():
    with pytest.raises(InvalidInputError, match="unknown scheduler 'nope'"):
        schedule("nope")


def test_a_prior_for_another_schedule_is_refused(model):
    conditioning, text = photo(model), torch.randn(1, 77, D)
    with torch.no_grad():
        prior = invert_reference(model, InversionRequest(photo=conditioning, empty_text=text, schedule=schedule(steps=2),
                                                         steps=2, start=0.033, end=0.016))
        request = SamplingRequest(photo=conditioning, text=text, uncond_text=None, schedule=schedule(steps=3),
                                  num_frames=2, guidance_scale=1.0, seed=0, prior=prior)
        with pytest.raises(InvalidInputError, match=f"inverted to timestep {prior.timestep}"):
            generate_latents(model, request)


def test_the_same_request_gives_the_same_latents(model):
    conditioning, text = photo(model), torch.randn(1, 77, D)
    request = SamplingRequest(photo=conditioning, text=text, uncond_text=torch.zeros(1, 77, D),
                              schedule=schedule("euler_ancestral"), num_frames=2, guidance_scale=3.0, seed=5)
    with torch.no_grad():
        first = generate_latents(model, request)
        generate_latents(model, replace(request, content_scale=0.0, seed=6))
        again = generate_latents(model, request)
    assert first.shape == (1, 2, 4, 8, 8)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
