"""CPU detection (llmsparse.core.cpu), the compute dtype ``auto`` picks from it, and ``llmsparse env``."""

import json
import logging

import pytest
import torch
from conftest import tiny_model

import llmsparse
from llmsparse.cli import main
from llmsparse.core import cpu

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16
"""


@pytest.fixture
def fresh(monkeypatch):
    """Forget what was detected (and warned) before, and again after the test."""
    for cached in (cpu.machine, cpu.warn_emulated_bf16):
        cached.cache_clear()
    yield monkeypatch
    for cached in (cpu.machine, cpu.warn_emulated_bf16):
        cached.cache_clear()


def fake_cpu(monkeypatch, flags: str, torch_probes: dict[str, bool] | None = None) -> None:
    """This process sees a CPU with /proc/cpuinfo ``flags`` and torch.cpu probes ``torch_probes``."""
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Fake CPU", set(flags.split())))
    probes = torch_probes or {}
    for probe in cpu._TORCH:
        monkeypatch.setattr(torch.cpu, probe, (lambda on: lambda: on)(probes.get(probe, False)), raising=False)


def test_cpuinfo_flags_are_parsed(fresh, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    fresh.setattr(cpu, "Path", lambda _: path)
    assert cpu._cpuinfo() == ("Test CPU 9000", {"fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"})


@pytest.mark.parametrize(
    "flags, probes, features, bf16",
    [
        ("sse2 avx avx2 fma", {}, ("avx2",), False),
        ("avx2 avx512f", {}, ("avx2", "avx512f"), False),
        ("avx2 avx512f avx512_bf16", {}, ("avx2", "avx512f", "avx512_bf16"), True),
        ("avx2 avx512f amx_tile amx_bf16", {}, ("avx2", "avx512f", "amx", "amx_bf16"), True),
        ("", {"_is_avx2_supported": True, "_is_avx512_bf16_supported": True}, ("avx2", "avx512_bf16"), True),  # no /proc: torch's report
        ("", {}, (), False),
    ],
)
def test_features_and_native_bf16(fresh, flags, probes, features, bf16):
    fake_cpu(fresh, flags, probes)
    m = cpu.machine()
    assert m.features == features and m.cpu == "Fake CPU"
    assert cpu.native_bf16(torch.device("cpu")) is bf16
    assert cpu.machine() is m  # detected once
    assert m.summary().startswith("Fake CPU") and json.loads(json.dumps(m.to_dict()))["features"] == list(features)


@pytest.mark.parametrize("native", [False, True])
def test_auto_compute_dtype(fresh, native):
    fresh.setattr(cpu, "native_bf16", lambda device: native)
    cpu_ = torch.device("cpu")
    fast = torch.bfloat16 if native else torch.float32
    assert cpu.compute_dtype(torch.bfloat16, cpu_) == fast
    assert cpu.compute_dtype(torch.float32, cpu_) == fast  # bf16 forwards for a float32 model too, where they are native
    assert cpu.compute_dtype(torch.float16, cpu_) == fast  # CPU float16 matmuls are slow
    assert cpu.compute_dtype(torch.float32, cpu_, torch.float32) == torch.float32
    assert cpu.compute_dtype(torch.float16, torch.device("cuda")) == torch.float16  # a GPU runs a float16 model as it is
    assert cpu.compute_dtype(torch.float32, cpu_, torch.bfloat16) == torch.bfloat16  # explicit wins


def test_explicit_bf16_without_native_support_warns_once(fresh, caplog, calib_ids):
    fresh.setattr(cpu, "native_bf16", lambda device: False)
    model = tiny_model("llama")
    with caplog.at_level(logging.WARNING, logger="llmsparse.core.cpu"):
        for _ in range(2):
            llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu", compute_dtype="bfloat16")
        llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu", compute_dtype="float32")
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "3x slower" in warnings[0]


def test_native_bf16_does_not_warn(fresh, caplog, calib_ids):
    fresh.setattr(cpu, "native_bf16", lambda device: True)
    with caplog.at_level(logging.WARNING, logger="llmsparse.core.cpu"):
        llmsparse.prune(tiny_model("llama"), method="wanda", sparsity=0.5, calib=calib_ids, device="cpu", compute_dtype="bfloat16")
    assert not [r for r in caplog.records if "emulated" in r.getMessage()]


def pruned(compute_dtype: str, calib_ids) -> dict[str, torch.Tensor]:
    model = tiny_model("gemma3")
    llmsparse.prune(model, method="sparsegpt", sparsity=0.5, calib=calib_ids, device="cpu", compute_dtype=compute_dtype)
    return {k: v for k, v in model.state_dict().items() if k.endswith("proj.weight")}


@pytest.mark.parametrize("native, same_as", [(False, "float32"), (True, "bfloat16")])
def test_auto_results_equal_the_explicit_dtype(fresh, calib_ids, native, same_as):
    fresh.setattr(cpu, "native_bf16", lambda device: native)
    auto, explicit = pruned("auto", calib_ids), pruned(same_as, calib_ids)
    other = pruned("bfloat16" if same_as == "float32" else "float32", calib_ids)
    for name, w in auto.items():
        assert torch.equal(w, explicit[name]), name
    assert any(not torch.equal(w, other[name]) for name, w in auto.items())  # the dtype matters, so the test can fail


@pytest.mark.parametrize("native", [False, True])
def test_the_report_says_which_dtype_auto_chose(fresh, calib_ids, native):
    fresh.setattr(cpu, "native_bf16", lambda device: native)
    report = llmsparse.prune(tiny_model("llama"), method="wanda", sparsity=0.5, calib=calib_ids, device="cpu")
    name = "bfloat16" if native else "float32"
    assert report.compute_dtype == name and f"calibration forwards in {name}" in report.summary()
    assert report.to_dict()["compute_dtype"] == name
    assert llmsparse.prune(tiny_model("llama"), method="magnitude", sparsity=0.5).compute_dtype is None  # no forwards


def test_env_command_prints_versions_and_cpu(fresh, capsys):
    fake_cpu(fresh, "avx2 avx512f", {})
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    rows = {line[:20].strip(): line[22:] for line in out.splitlines()}
    assert rows["torch"] == torch.__version__ and rows["llmsparse"] == llmsparse.__version__ and rows["transformers"]
    assert rows["cpu"].startswith("Fake CPU") and rows["cpu features"] == "avx2 avx512f" and rows["native bf16 on cpu"].startswith("no ")
    assert rows["threads"].startswith(str(torch.get_num_threads())) and rows["gpus"] == "none"


def test_saved_run_records_the_machine(tmp_path, calib_ids):
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="magnitude", sparsity=0.5, device="cpu")
    llmsparse.save_pruned(model, None, tmp_path / "out", report)
    meta = json.loads((tmp_path / "out" / "llmsparse.json").read_text())
    assert meta["machine"] == json.loads(json.dumps(cpu.machine().to_dict()))
    assert set(meta["machine"]["features"]) <= set(cpu.FEATURES) and meta["machine"]["threads"] == torch.get_num_threads()


def test_both_kernels_take_their_path_from_one_detection(monkeypatch):
    from llmsparse.activation import gemv_kernel as decode_kernel
    from llmsparse.runtime import sparse_kernel as runtime_kernel

    assert runtime_kernel.cpu_isa is cpu.cpu_isa and runtime_kernel.ISAS is cpu.ISAS
    monkeypatch.setenv(cpu.ISA_ENV, "scalar")
    cpu.cpu_isa.cache_clear()
    try:
        assert decode_kernel.isa() == runtime_kernel.cpu_isa() == "scalar"
        assert runtime_kernel.ISA_FLAGS["scalar"] == []  # a portable build: no -march
    finally:
        cpu.cpu_isa.cache_clear()
