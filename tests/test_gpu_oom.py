"""GPU out-of-memory becomes one line naming the layer and the settings to change (faked on CPU)."""

import pytest
import torch

from llmsparse.errors import LlmsparseError, MemoryLimitError
from llmsparse.gpu.oom import GpuMemoryError, layer_oom

TORCH_TEXT = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.23 GiB is free.\n"
    "Of the allocated memory 75.1 GiB is allocated by PyTorch ... PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
)


def test_fake_oom_is_one_line_naming_layer_and_remedies():
    with pytest.raises(GpuMemoryError) as caught:
        with layer_oom("layer 17 (mlp.down_proj)", 128, 2048, host_flag="--activations host"):
            raise torch.cuda.OutOfMemoryError(TORCH_TEXT)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "GPU out of memory in layer 17 (mlp.down_proj) allocating 2.00 GiB: use a smaller --nsamples (now 128) "
        "or --seqlen (now 2048), keep the calibration activations in host memory (--activations host), or --device cpu"
    )
    assert isinstance(caught.value, LlmsparseError) and isinstance(caught.value, MemoryLimitError)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_without_a_host_flag_or_size_the_message_names_only_real_settings():
    with pytest.raises(GpuMemoryError, match=r"^GPU out of memory in layer 0: use a smaller --nsamples \(now 8\) or --seqlen \(now 64\), or --device cpu$"):
        with layer_oom("layer 0", 8, 64):
            raise torch.OutOfMemoryError("out of memory")


def test_other_errors_pass_through():
    with pytest.raises(ValueError, match="unrelated"):
        with layer_oom("layer 0", 8, 64):
            raise ValueError("unrelated")


def test_an_out_of_memory_error_while_pruning_names_the_layer_and_the_run_stops(calib_ids, monkeypatch):
    from conftest import tiny_model

    import llmsparse
    from llmsparse.methods.wanda import Wanda

    calls = []
    original = Wanda.prune

    def second_layer_runs_out(self, weight, stats, sparsity, pattern, name=""):
        calls.append(name)
        if ".1." in name:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, weight, stats, sparsity, pattern, name=name)

    monkeypatch.setattr(Wanda, "prune", second_layer_runs_out)
    model = tiny_model("llama")
    with pytest.raises(GpuMemoryError, match=r"GPU out of memory in layer 1 allocating 2.00 GiB: use a smaller --nsamples \(now 8\)"):
        llmsparse.prune(model, None, "wanda", 0.5, calib=calib_ids)
