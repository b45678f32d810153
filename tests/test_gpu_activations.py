"""The GPU engine's activation store, on CPU: resident and host paths give back what was written, batches cover every sequence."""

import pytest
import torch

from llmsparse.gpu.activations import ActivationStore, fits


@pytest.mark.parametrize("on_device", [True, False])
def test_round_trip_through_batches(on_device):
    store = ActivationStore(5, 3, 4, torch.bfloat16, torch.device("cpu"), on_device=on_device)
    assert [(s.start, s.stop) for s in store.batches(2)] == [(0, 2), (2, 4), (4, 5)]
    x = torch.randn(5, 3, 4).bfloat16()
    for rows in store.batches(2):
        store.write(rows, x[rows] * 2)  # e.g. a layer's outputs
    got = torch.cat([store.read(rows) for rows in store.batches(3)])
    assert torch.equal(got, x * 2) and got.dtype == torch.bfloat16
    assert store.on_device is on_device and store.data.shape == (5, 3, 4)


def test_resident_reads_are_views_and_cpu_always_fits():
    store = ActivationStore(2, 2, 2, torch.float32, torch.device("cpu"))
    assert store.on_device and fits(1 << 60, torch.device("cpu"))
    store.read(slice(0, 1)).fill_(7)
    assert (store.data[0] == 7).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_host_store_is_pinned_and_too_big_goes_to_the_host():
    device = torch.device("cuda")
    free, _ = torch.cuda.mem_get_info(device)
    assert not fits(free + 1, device)
    store = ActivationStore(4, 8, 16, torch.bfloat16, device, on_device=False)
    assert store.data.is_pinned() and store.read(slice(0, 2)).is_cuda
