"""LivePhoto-Wan2.1: the authors' released model (Wan2.1-T2V-1.3B turned image-to-video with Pusa's per-frame
timesteps, plus a motion-intensity embedding and a text re-weighting module), run from its released files.

One module one idea: ``model`` (the network), ``keys`` (reading the original-key ``base.safetensors``),
``lora`` (merging ``lora.safetensors``), ``sampling`` (schedule, per-frame timesteps, three-pass guidance),
``pipeline`` (text encoder, VAE and the loop around them). Nothing here imports ComfyUI.
"""
