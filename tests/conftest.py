import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Tests run on 2 cores; more threads only add contention.
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def pipeline(tmp_path):
    from tiny import tiny_pipeline

    return tiny_pipeline(tmp_path / "tokenizer")
