"""Suite-wide test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run on shared 2-core machines: one intra-op thread avoids oversubscription.

    Tests that study threading (e.g. batch invariance at 1 and 2 threads) set their own count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
