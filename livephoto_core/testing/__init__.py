"""Tiny random-weight models with SD-1.5's, DINOv2's and LivePhoto's structure, and SD-1.5 single-file
writers for them: what the tests and the benchmarks build instead of downloading weights (as
diffusers' and transformers' testing_utils serve theirs)."""
