"""Reading the user's model files: detect what a file is, load SD-1.5, DINOv2, motion modules and our
checkpoint safely, and assemble a pipeline from them (``assemble.load_pipeline``)."""
