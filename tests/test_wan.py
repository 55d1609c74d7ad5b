"""LivePhoto-Wan2.1 (livephoto_core.wan) against the authors' code, through fixtures their code wrote
(tests/fixtures/wan/make_reference.py; the commit is in the files' metadata), and the loader's refusals."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from livephoto_core.errors import ModelFileError
from livephoto_core.loading.files import read_safetensors_metadata
from livephoto_core.wan import sampling
from livephoto_core.wan.keys import check_wan_base, load_livephoto_wan, model_state_dict
from livephoto_core.wan.lora import lora_targets

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "wan"
BASE, LORA, REFERENCE = FIXTURES / "tiny_base.safetensors", FIXTURES / "tiny_lora.safetensors", FIXTURES / "reference.safetensors"
# float32 on the CPU agrees to ~2e-6 (the sinusoidal time embedding: their float64, diffusers' float32).
ATOL = 2e-5


@pytest.fixture(scope="module")
def reference():
    return load_file(REFERENCE)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    with torch.no_grad():
        yield load_livephoto_wan(BASE, LORA, lora_alpha=1.3, dtype=torch.float32, head_dim=12)


def test_fixtures_name_the_authors_commit():
    metadata = read_safetensors_metadata(REFERENCE)
    assert metadata["source"] == "github.com/XavierCHEN34/LivePhoto" and len(metadata["commit"]) == 40


@pytest.mark.parametrize("level, expected", [(3, "forward"), (0, "forward_null")])
def test_forward_matches_the_authors_model(model, reference, level, expected):
    with torch.no_grad():
        ours = model(reference["latents"], reference["timesteps"], reference["prompt"], torch.tensor([level]))
    torch.testing.assert_close(ours, reference[expected], atol=ATOL, rtol=0)


def test_intensity_changes_the_reference_output(reference):
    """The intensity path is exercised: the fixture's levels 3 and 0 differ far beyond the tolerance."""
    assert (reference["forward"] - reference["forward_null"]).abs().max() > 100 * ATOL


def test_sampling_matches_the_authors_pipeline(model, reference):
    latents = sampling.initial_latents(reference["photo_latent"], (1, 16, 3, 4, 4), seed=11, dtype=torch.float32)
    with torch.no_grad():
        sampled = sampling.sample(model, latents, reference["prompt"], reference["negative"], intensity=3, steps=3,
                                  guidance=5.0)
    # Their pipeline returns its one video without the batch dimension.
    torch.testing.assert_close(sampled[0], reference["sampled"], atol=ATOL, rtol=0)
    assert torch.equal(sampled[:, :, :1], reference["photo_latent"])  # the photo frame never moves


def test_without_the_lora_the_output_differs(reference):
    with torch.no_grad():
        plain = load_livephoto_wan(BASE, dtype=torch.float32, head_dim=12)
        ours = plain(reference["latents"], reference["timesteps"], reference["prompt"], torch.tensor([3]))
    assert (ours - reference["forward"]).abs().max() > 100 * ATOL


def test_key_conversion_agrees_with_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = load_file(BASE)
    ours = {k.removeprefix("transformer."): v for k, v in model_state_dict(original).items()
            if k.startswith("transformer.")}
    stock = {k: v for k, v in original.items() if not k.startswith(("motion_intensity_embed.", "text_reweight."))}
    theirs = convert_wan_transformer_to_diffusers(dict(stock))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_frame_timesteps_hold_the_photo_frame_clean():
    timesteps = sampling.frame_timesteps(sampling.pusa_sigmas(30)[1], 21)
    assert timesteps.shape == (1, 21) and timesteps[0, 0] == 0
    assert torch.all(timesteps[0, 1:] == timesteps[0, 1]) and timesteps[0, 1] == int(timesteps[0, 1])


def test_guided_velocity_is_text_plus_intensity_guidance():
    p, n, e = torch.tensor(3.0), torch.tensor(1.0), torch.tensor(2.0)
    assert sampling.guided_velocity(p, n, e, 5.0) == 1 + 5 * 2 + 5 * 1


def test_lora_key_layouts():
    peft = ["diffusion_model.blocks.0.self_attn.q.lora_B.default.weight", "blocks.1.ffn.0.lora_B.weight"]
    assert lora_targets(peft) == {
        "blocks.0.self_attn.q.weight": (peft[0], peft[0].replace("lora_B", "lora_A")),
        "blocks.1.ffn.0.weight": (peft[1], peft[1].replace("lora_B", "lora_A")),
    }
    assert lora_targets(["head.head.lora_up.weight"]) == {"head.head.weight": ("head.head.lora_up.weight",
                                                                               "head.head.lora_down.weight")}


def write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def test_an_sd15_file_is_refused_as_the_wan_base(tmp_path):
    sd = write(tmp_path / "sd15.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(32, 768),
    })
    with pytest.raises(ModelFileError, match=r"sd15.safetensors is an SD-1\.5 .*not a Wan DiT; --wan-dit needs"):
        check_wan_base(sd)


def test_a_stock_wan_is_refused(tmp_path):
    stock = {k: v for k, v in load_file(BASE).items() if not k.startswith(("motion_intensity_embed.", "text_reweight."))}
    with pytest.raises(ModelFileError, match="Wan2.1 DiT without LivePhoto's intensity modules"):
        check_wan_base(write(tmp_path / "wan.safetensors", stock))


def test_a_lora_naming_no_parameter_is_refused(tmp_path):
    lora = load_file(LORA)
    lora["blocks.7.self_attn.q.lora_A.default.weight"] = torch.zeros(2, 24)
    lora["blocks.7.self_attn.q.lora_B.default.weight"] = torch.zeros(24, 2)
    path = write(tmp_path / "other_lora.safetensors", lora)
    with pytest.raises(ModelFileError, match=r"names blocks\.7\.self_attn\.q\.weight, which the Wan DiT does not have"):
        load_livephoto_wan(BASE, path, dtype=torch.float32, head_dim=12)


def test_a_lora_of_other_widths_is_refused(tmp_path):
    lora = load_file(LORA)
    lora["blocks.0.self_attn.q.lora_A.default.weight"] = torch.zeros(2, 40)
    path = write(tmp_path / "wide_lora.safetensors", lora)
    with pytest.raises(ModelFileError, match=r"does not make the parameter's \[24, 24\]"):
        load_livephoto_wan(BASE, path, dtype=torch.float32, head_dim=12)
