"""The torch modules LivePhoto adds to SD-1.5, one idea each: the 10-channel motion UNet (``unet``),
the photo's DINOv2 tokens and their attention (``content``), the per-token text weights (``reweight``)."""
