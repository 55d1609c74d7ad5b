"""A test-only ComfyUI pack: "Load CLIP (tiny umT5, type wan)", for the real-server test of the LivePhoto-Wan workflow.

ComfyUI's CLIPLoader takes only the full 24-layer umT5-XXL (its config is fixed and the file is recognised by block
23), which a CPU test machine cannot hold. This node builds the same CLIP object CLIPLoader builds for type wan
(comfy.text_encoders.wan's model and tokenizer, the tokenizer's sentencepiece vocabulary from the file's
"spiece_model" tensor, as ComfyUI's umT5 files carry it) with the toy size of TINY_UMT5 given through
ComfyUI's own model_options hook. Everything after it (CLIPTextEncode, the sampler) is the real path.
"""

import comfy.sd
import comfy.supported_models_base
import comfy.text_encoders.wan
import comfy.utils
import folder_paths
import torch

# transformers' UMT5Config for the same model: d_model 32, d_kv 8, d_ff 64, 2 layers, 4 heads, gated-gelu.
TINY_UMT5 = {"vocab_size": 60, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
             "relative_attention_num_buckets": 32, "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True,
             "model_type": "umt5"}


def tiny_wan_clip(state_dict: dict) -> comfy.sd.CLIP:
    state_dict = dict(state_dict)
    spiece = state_dict.pop("spiece_model")
    target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.wan.WanT5Tokenizer, comfy.text_encoders.wan.te())
    clip = comfy.sd.CLIP(target, tokenizer_data={"spiece_model": spiece},
                         model_options={"umt5xxl_model_config": TINY_UMT5, "dtype": torch.float32})
    missing, _ = clip.load_sd(state_dict)
    if missing:
        raise ValueError(f"the tiny umT5 file lacks {missing[:3]}")
    return clip


class LoadTinyUMT5:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name):
        path = folder_paths.get_full_path_or_raise("text_encoders", clip_name)
        return (tiny_wan_clip(comfy.utils.load_torch_file(path, safe_load=True)),)


NODE_CLASS_MAPPINGS = {"LoadTinyUMT5": LoadTinyUMT5}
