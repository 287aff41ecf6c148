import sys
from pathlib import Path

import pytest
import torch

# Test helper modules (e.g. linear_gaussian.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny tensors: one thread is many times faster than two contending for the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
