"""minicbam.device: the CUDA probe that decides whether a GPU is usable, its one-line
reasons, and 'cuda:N' device strings."""

import numpy as np
import pytest

from minicbam import device


class _FakeError(Exception):
    pass


@pytest.mark.parametrize(
    "message, expected",
    [
        ("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an "
         "unsupported toolchain", "driver/toolkit mismatch"),
        ("NVVM_ERROR_COMPILATION", "driver/toolkit mismatch"),
        ('Failure finding "libnvrtc.so.13 or libnvrtc.so.12"', "no NVVM/NVRTC"),
        ("Error at driver init: CUDA driver library cannot be found", "no CUDA driver"),
        ("CUDA_ERROR_INSUFFICIENT_DRIVER", "driver is older"),
        ("something nobody foresaw", "a probe CUDA kernel failed"),
    ],
)
def test_failures_are_named_in_one_line(message, expected):
    reason = device.describe_cuda_failure(_FakeError(message + "\nsecond line of detail"))
    assert expected in reason
    assert "\n" not in reason and "second line" not in reason
    assert "_FakeError" in reason  # the original error stays visible


def test_long_messages_are_cut():
    reason = device.describe_cuda_failure(_FakeError("x" * 1000))
    assert len(reason) < 300 and reason.endswith("...")


@pytest.mark.cuda
def test_probe_runs_a_kernel_and_reads_it_back():
    assert device.probe_cuda() is None


@pytest.mark.cuda
def test_probe_reports_a_kernel_that_computes_garbage(monkeypatch):
    class Broken:
        def __getitem__(self, launch):
            return lambda out: device.fill_kernel(out, 7)

    monkeypatch.setattr(device, "_probe_kernel", lambda: Broken())
    assert "returned wrong values" in device.probe_cuda()


@pytest.mark.cuda
def test_probe_reports_a_failing_launch(monkeypatch):
    def failing():
        raise _FakeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")

    monkeypatch.setattr(device, "_probe_kernel", failing)
    assert "driver/toolkit mismatch" in device.probe_cuda()


def test_unusable_cuda_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(device, "_backend", "none")
    monkeypatch.setattr(device, "_backend_reason", "the probe said no")
    assert not device.cuda_is_available()
    assert device.cuda_unavailable_reason() == "the probe said no"
    with pytest.raises(RuntimeError, match=r"device 'cuda:0' requested but CUDA is unusable: "
                                           r"the probe said no"):
        device.normalize_device("cuda:0")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "CUDA"])
def test_malformed_device_names(name):
    with pytest.raises(ValueError, match=r"unknown device .*expected 'cpu', 'cuda' or 'cuda:N'"):
        device.normalize_device(name)


@pytest.mark.cuda
def test_cuda_index_selects_one_device_per_process(monkeypatch):
    monkeypatch.setattr(device, "_cuda_index", None)
    assert device.normalize_device("cuda:0") == "cuda"
    assert device.normalize_device("cuda") == "cuda"
    with pytest.raises(ValueError, match=r"'cuda:1': this process already uses cuda:0"):
        device.normalize_device("cuda:1")


@pytest.mark.cuda
def test_cuda_index_past_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(device, "_cuda_index", None)
    count = len(device.cuda_module().gpus)
    with pytest.raises(ValueError, match=rf"only {count} CUDA device\(s\) found"):
        device.normalize_device(f"cuda:{count}")
    assert device._cuda_index is None  # nothing was selected


class _OneGpu:
    """A stand-in for numba.cuda with a single device (no GPU or simulator needed)."""

    def __init__(self):
        self.gpus = [object()]
        self.selected = []

    def select_device(self, index):
        self.selected.append(index)


def test_cuda_index_past_the_devices_is_refused_on_any_machine(monkeypatch):
    fake = _OneGpu()
    monkeypatch.setattr(device, "cuda_is_available", lambda: True)
    monkeypatch.setattr(device, "cuda_module", lambda: fake)
    monkeypatch.setattr(device, "cuda_backend", lambda: "gpu")
    monkeypatch.setattr(device, "_cuda_index", None)
    with pytest.raises(ValueError, match=r"only 1 CUDA device\(s\) found \(cuda:0..0\)"):
        device.normalize_device("cuda:1")
    assert fake.selected == [] and device._cuda_index is None
    assert device.normalize_device("cuda:0") == "cuda" and fake.selected == [0]


def test_cpu_stays_cpu():
    assert device.normalize_device("cpu") == "cpu"
    assert device.device_of(np.zeros(3)) == "cpu"
