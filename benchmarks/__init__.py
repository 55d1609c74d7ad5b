"""Benchmarks of LivePhoto against diffusers' AnimateDiffPipeline and the hardware; run benchmarks/run.py."""
