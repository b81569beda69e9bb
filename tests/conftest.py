import pytest
import torch


def cuda_devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
