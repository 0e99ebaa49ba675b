"""Shared fixtures. Without a GPU, TRITON_INTERPRET is set before anything imports triton, so Triton
kernels run on CPU tensors (compile checks for real GPU targets run in subprocesses). With a GPU the
kernels run compiled and the GPU tests run; BIGBIRD_TEST_INTERPRET=1/0 forces either way."""

import os
import pytest
import torch  # importing torch does not import triton

_interpret = os.environ.get("BIGBIRD_TEST_INTERPRET", "0" if torch.cuda.is_available() else "1")
if _interpret == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Fresh random inputs per run, but each test reproducible from the printed seed."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed for this test: {seed}")  # shown by pytest when the test fails
    yield seed
