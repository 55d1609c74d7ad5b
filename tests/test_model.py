"""The LivePhoto UNet and its parts against diffusers' own SD + AnimateDiff model."""

import pytest
import torch
from diffusers import UNetMotionModel
from livephoto_core.testing.tiny import (
    TINY_UNET,
    randomize_,
    tiny_config,
    tiny_dinov2,
    tiny_model,
    tiny_unet2d,
)

from livephoto_core.config import LivePhotoConfig
from livephoto_core.errors import ModelFileError
from livephoto_core.model import LivePhotoModel
from livephoto_core.modules.content import ContentAttnProcessor
from livephoto_core.modules.unet import (
    assemble_motion_unet,
    build_motion_adapter,
    conditioning_channels,
    frame_embedding,
)

F = 4
D = TINY_UNET["cross_attention_dim"]


def random_motion_adapter(config, unet2d, seed=1):
    # AnimateDiff zero-initialises proj_out; random weights make the motion modules do something.
    return randomize_(build_motion_adapter(config, unet2d), seed)


def test_assembled_motion_unet_equals_diffusers_from_unet2d():
    config = tiny_config()
    adapter = random_motion_adapter(config, tiny_unet2d())
    reference = UNetMotionModel.from_unet2d(tiny_unet2d(), adapter)
    ours = assemble_motion_unet(tiny_unet2d(), adapter)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    sample, context = torch.randn(1, 4, F, 8, 8), torch.randn(F, 7, D)
    torch.testing.assert_close(ours(sample, 10, context).sample, reference(sample, 10, context).sample)


def test_untrained_livephoto_unet_is_sd_plus_motion_modules():
    """New conv_in channels at zero and content attention at zero output: exactly SD + motion modules."""
    config = tiny_config()
    adapter = random_motion_adapter(config, tiny_unet2d())
    reference = UNetMotionModel.from_unet2d(tiny_unet2d(), adapter).eval()
    model = LivePhotoModel.from_base(config, tiny_unet2d(), tiny_dinov2(), adapter).eval()

    noisy = torch.randn(1, F, 4, 8, 8)
    text = torch.randn(1, 77, D)
    content = model.encode_content(torch.rand(1, 3, 64, 64))
    channels = conditioning_channels(torch.randn(1, 4, 8, 8), F, torch.tensor([7.0]))
    context = torch.cat([text, content], dim=1).repeat_interleave(F, dim=0)
    with torch.no_grad():
        ours = model.unet(noisy, torch.tensor(500), context, channels)
        expected = reference(noisy.transpose(1, 2), 500, text.repeat_interleave(F, dim=0)).sample.transpose(1, 2)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_new_layers_change_the_output_once_trained():
    model = tiny_model()
    noisy, text = torch.randn(1, F, 4, 8, 8), torch.randn(1, 77, D)
    content = torch.randn(1, model.config.num_content_tokens, D)
    context = torch.cat([text, content], dim=1).repeat_interleave(F, dim=0)
    channels = conditioning_channels(torch.randn(1, 4, 8, 8), F, torch.tensor([5.0]))
    with torch.no_grad():
        before = model.unet(noisy, torch.tensor(500), context, channels)
        for processor in model.unet.content_processors():
            randomize_(processor.to_out, 3)
        with_content = model.unet(noisy, torch.tensor(500), context, channels)
        content_off = model.unet(noisy, torch.tensor(500), context, channels, content_scale=0.0)
        randomize_(model.unet.motion_unet.conv_in, 4)
        stronger = conditioning_channels(torch.randn(1, 4, 8, 8), F, torch.tensor([9.0]))
        other_channels = model.unet(noisy, torch.tensor(500), context, stronger)
    assert not torch.allclose(before, with_content)
    torch.testing.assert_close(content_off, before)
    assert not torch.allclose(with_content, other_channels)


def test_the_content_scale_is_an_argument_of_each_call_that_only_content_attention_hears(capfd):
    model = tiny_model()
    for processor in model.unet.content_processors():
        randomize_(processor.to_out, 3)
    noisy, text = torch.randn(1, F, 4, 8, 8), torch.randn(1, 77, D)
    context = torch.cat([text, torch.randn(1, model.config.num_content_tokens, D)], dim=1)
    channels = conditioning_channels(torch.randn(1, 4, 8, 8), F, torch.tensor([5.0]))
    with torch.no_grad():
        outputs = [model.unet(noisy, torch.tensor(500), context, channels, content_scale=s) for s in (1.0, 0.5, 1.0)]
    assert not torch.allclose(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=0)  # nothing of the 0.5 call stayed behind
    assert capfd.readouterr().err == ""  # no attention processor complained about an argument it does not take


def test_content_attention_sits_on_every_cross_attention_and_nowhere_else():
    model = tiny_model()
    processors = model.unet.motion_unet.attn_processors
    cross = [n for n, p in processors.items() if isinstance(p, ContentAttnProcessor)]
    assert cross and all(n.endswith("attn2.processor") and "motion_modules" not in n for n in cross)
    sd_cross = [n for n in processors if n.endswith("attn2.processor") and "motion_modules" not in n]
    assert sorted(cross) == sorted(sd_cross)


def test_conditioning_channels_follow_the_paper():
    reference = torch.randn(2, 4, 3, 5)
    channels = conditioning_channels(reference, 16, torch.tensor([3.0, 10.0]))
    assert channels.shape == (2, 16, 6, 3, 5)
    for f in range(16):
        torch.testing.assert_close(channels[:, f, :4], reference)
        assert torch.all(channels[:, f, 4] == f / 15)
    assert torch.all(channels[0, :, 5] == 3.0) and torch.all(channels[1, :, 5] == 10.0)
    assert frame_embedding(1).tolist() == [0.0]


def test_reweighter_starts_near_identity_and_weights_lie_in_0_1():
    model = tiny_model()
    text = torch.randn(2, 154, D)
    with torch.no_grad():
        reweighted, weights = model.reweight_text(text)
    assert weights.shape == (2, 154)
    assert torch.all(weights > 0.98) and torch.all(weights < 1)
    torch.testing.assert_close(reweighted, text * weights.unsqueeze(-1))
    randomize_(model.text_reweighter.head, 0)
    with torch.no_grad():
        _, weights = model.reweight_text(text)
    assert weights.min() >= 0 and weights.max() <= 1 and weights.std() > 0.01
    # Chunks of 77 tokens are reweighted on their own, as if they were separate prompts.
    with torch.no_grad():
        _, first = model.reweight_text(text[:, :77])
    torch.testing.assert_close(weights[:, :77], first)


def test_only_livephoto_parts_train():
    model = tiny_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for name in trainable:
        assert (
            name.startswith(("unet.motion_unet.conv_in.", "content_encoder.proj.", "text_reweighter."))
            or ".motion_modules." in name
            or ".processor." in name
        ), name
    assert not any(n.startswith("content_encoder.dinov2") for n in trainable)
    assert any(".attentions.0.transformer_blocks.0.attn1.to_q" in n for n, _ in model.named_parameters())
    assert not any(".attentions.0.transformer_blocks.0.attn1.to_q" in n for n in trainable)


def test_trainable_state_round_trips():
    source = tiny_model(seed=0)
    randomize_(source, 5)
    target = tiny_model(seed=0)
    target.load_trainable_state_dict(source.trainable_state_dict())
    for key, value in source.trainable_state_dict().items():
        torch.testing.assert_close(target.trainable_state_dict()[key], value)


def test_external_motion_weights_stay_out_of_the_checkpoint():
    state = tiny_model(tiny_config(motion_weights="external", motion_module_hash="abc")).trainable_state_dict()
    assert state and not any(".motion_modules." in k for k in state)


def test_mismatched_checkpoint_is_refused_clearly():
    model = tiny_model()
    state = model.trainable_state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(ModelFileError, match="missing"):
        model.load_trainable_state_dict(state, "x.safetensors")
    state = model.trainable_state_dict()
    key = next(iter(state))
    state[key] = torch.zeros(3)
    with pytest.raises(ModelFileError, match="shape"):
        model.load_trainable_state_dict(state, "x.safetensors")


def test_base_of_another_shape_is_refused():
    with pytest.raises(ModelFileError, match="channels"):
        LivePhotoModel.from_base(tiny_config(unet_block_out_channels=(320, 640, 1280, 1280)), tiny_unet2d(), tiny_dinov2())
    with pytest.raises(ModelFileError, match="DINOv2"):
        LivePhotoModel.from_base(tiny_config(dinov2_hidden_size=1024), tiny_unet2d(), tiny_dinov2())


def test_config_round_trips_through_metadata():
    config = tiny_config(intensity_thresholds=[0.5 + i / 20 for i in range(9)], extra={"steps": 12})
    metadata = config.to_metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    assert LivePhotoConfig.from_metadata(metadata) == config


def test_config_from_another_format_version_is_refused():
    metadata = tiny_config().to_metadata()
    metadata["livephoto_config"] = metadata["livephoto_config"].replace('"format_version": 1', '"format_version": 99')
    with pytest.raises(ModelFileError, match="format version 99"):
        LivePhotoConfig.from_metadata(metadata, "old.safetensors")
    with pytest.raises(ModelFileError, match="thresholds"):
        tiny_config(intensity_thresholds=[0.9] * 9)
    with pytest.raises(ModelFileError, match="default intensity 11 is not a level from 1 to 10"):
        tiny_config(default_intensity=11)


def test_ablation_switches_turn_the_modules_off():
    model = tiny_model(tiny_config(text_reweighting=False, intensity_map=False))
    randomize_(model.text_reweighter, 1)
    text = torch.randn(1, 77, D)
    with torch.no_grad():
        reweighted, weights = model.reweight_text(text)
    torch.testing.assert_close(reweighted, text)
    assert torch.all(weights == 1)
    channels = model.conditioning_channels(torch.randn(1, 4, 8, 8), F, torch.tensor([7.0]))
    assert torch.all(channels[:, :, 5] == 0) and torch.all(channels[:, -1, 4] == 1)


@pytest.mark.parametrize("switch", ["text_time_embedding", "text_film"])
def test_a_text_path_starts_as_identity_trains_and_reads_each_video_s_own_words(switch):
    config = tiny_config(**{switch: True})
    adapter = random_motion_adapter(config, tiny_unet2d())
    plain = LivePhotoModel.from_base(tiny_config(), tiny_unet2d(), tiny_dinov2(), adapter).eval()
    model = LivePhotoModel.from_base(config, tiny_unet2d(), tiny_dinov2(), adapter).eval()
    marker = "time_embedding.cond_proj." if switch == "text_time_embedding" else ".text_film."
    added = {k: v for k, v in model.unet.motion_unet.named_parameters() if marker in k}
    assert added and all(p.requires_grad for p in added.values())
    assert {f"unet.{k}" for k in added} <= set(model.trainable_state_dict())

    noisy = torch.randn(2, F, 4, 8, 8)
    content = model.encode_content(torch.rand(2, 3, 64, 64))
    texts = torch.randn(2, 77, D)
    channels = conditioning_channels(torch.randn(2, 4, 8, 8), F, torch.tensor([3.0, 7.0]))
    context = torch.cat([texts, content], dim=1)
    with torch.no_grad():
        # Zero-initialised: the model is the paper's until trained.
        torch.testing.assert_close(model.unet(noisy, torch.tensor(500), context, channels),
                                   plain.unet(noisy, torch.tensor(500), context, channels))
        for parameter in added.values():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
        shared = model.unet(noisy, torch.tensor(500), context, channels)
        per_frame = model.unet(noisy, torch.tensor(500), context.repeat_interleave(F, dim=0), channels)
        swapped = model.unet(noisy, torch.tensor(500), torch.cat([texts.flip(0), content], dim=1), channels)
    torch.testing.assert_close(shared, per_frame)  # one context row per video or one per frame: the same
    assert not torch.allclose(shared, swapped)  # each video is moved by its own words
    torch.testing.assert_close(swapped.flip(0)[:1], model.unet(  # ...and only by its own
        noisy[1:], torch.tensor(500), torch.cat([texts[:1], content[1:]], dim=1), channels[1:]).detach())


def test_text_film_gives_each_frame_its_share_of_the_motion():
    """Frame f of video b gets h * (1 + a + p_f c) + (b + p_f d), with p_f its frame-embedding value and
    (a, b, c, d) the FiLM of video b's own text: the first frame only the still part, the last all of it."""
    from livephoto_core.modules.unet import _FILM_TEXT, _apply_text_film

    videos, frames, channels, dim = 2, 4, 3, 5
    film = torch.nn.Linear(dim, 4 * channels)
    text = torch.randn(videos, dim)
    features = torch.randn(videos * frames, channels, 2, 2)
    positions = torch.tensor([[0.0, 1 / 3, 2 / 3, 1.0], [0.0, 0.5, 1.0, 1.0]])  # a clip; a later window's clamp
    token = _FILM_TEXT.set((text, positions))
    try:
        out = _apply_text_film(film, None, None, features)
    finally:
        _FILM_TEXT.reset(token)
    a, b, c, d = film(text).detach().chunk(4, dim=1)
    for video in range(videos):
        for frame in range(frames):
            p = positions[video, frame]
            row = video * frames + frame
            expected = features[row] * (1 + a[video] + p * c[video])[:, None, None] + (b[video] + p * d[video])[:, None, None]
            torch.testing.assert_close(out[row], expected)
