"""minicbam.device_pool, the caching allocator behind device.empty (on the simulator, whose
device arrays wrap NumPy arrays: the same release rule as numba's pointers on a GPU)."""

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicbam as mc
from minicbam import device, device_pool
from minicbam.device_events import count_device_events

pytestmark = pytest.mark.cuda

DTYPES = [np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_]


def _pattern(n, dtype, seed):
    values = np.random.default_rng(seed).integers(1, 100, n)
    return values.astype(dtype) if dtype is not np.bool_ else values % 2 == 1


def _filled(n, dtype, seed):
    host = _pattern(n, dtype, seed)
    array = device.empty((n,), dtype, device.CUDA)
    array.copy_to_device(host)
    return array, host


@given(n=st.integers(1, 700))
def test_bucket_fits_with_at_most_a_quarter_slack(n):
    size = device_pool.bucket(n)
    assert size >= n and size >= device_pool.MIN_BLOCK
    assert n <= device_pool.MIN_BLOCK or size <= 1.25 * n
    assert device_pool.bucket(n + 1) >= size  # monotone: a bigger request, a bigger block


def test_bucket_classes():
    assert [device_pool.bucket(n) for n in (1, 512, 513, 640, 641, 1024, 1025)] == [
        512,
        512,
        640,
        640,
        768,
        1024,
        1280,
    ]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    view=st.sampled_from(["reshape", "slice", "dtype", "tensor"]),
    seed=st.integers(0, 2**16),
)
def test_a_block_is_not_reused_while_any_view_lives(n, dtype, view, seed):
    gc.collect()
    array, host = _filled(n, dtype, seed)
    start = n // 3
    if view == "reshape":
        alive, expected = array.reshape(1, n), host.reshape(1, n)
    elif view == "slice":
        alive, expected = array[start:], host[start:]
    elif view == "dtype":
        alive, expected = array.view(np.uint8), host.view(np.uint8)
    else:
        alive, expected = mc.Tensor(array).detach().reshape(n), host
    del array
    gc.collect()
    # new arrays of the same size (same bucket) written with other values
    others = [_filled(n, dtype, seed + k + 1) for k in range(3)]
    got = alive.numpy() if isinstance(alive, mc.Tensor) else alive.copy_to_host()
    np.testing.assert_array_equal(got, expected)
    for other, other_host in others:
        np.testing.assert_array_equal(other.copy_to_host(), other_host)
    # once the last view dies, the block is cached and the next request of its size reuses it
    del alive, others, other
    gc.collect()
    before = device_pool.stats()
    again = device.empty((n,), dtype, device.CUDA)
    after = device_pool.stats()
    assert after["hits"] == before["hits"] + 1
    assert after["driver_allocations"] == before["driver_allocations"]
    del again


def test_stats_count_bytes_in_use_peak_and_cache():
    gc.collect()
    device_pool.reset_peak_stats()
    base = device_pool.stats()
    a = device.empty((1000,), np.float32, device.CUDA)  # 4000 bytes -> a 4096-byte block
    b = device.empty((10,), np.float64, device.CUDA)  # 80 bytes -> 512
    s = device_pool.stats()
    assert s["allocated"] - base["allocated"] == 4096 + 512
    assert s["peak"] >= s["allocated"]
    del a
    gc.collect()
    s = device_pool.stats()
    assert s["allocated"] - base["allocated"] == 512
    assert s["peak"] - base["allocated"] == 4096 + 512  # the peak remembers
    assert s["cached"] >= 4096 and s["reserved"] == s["allocated"] + s["cached"]
    device_pool.empty_cache()
    s = device_pool.stats()
    assert s["cached"] == 0 and s["reserved"] == s["allocated"]
    del b


def test_the_public_functions(monkeypatch):
    gc.collect()
    x = mc.ones(256, device="cuda")
    assert mc.device.memory_allocated() >= 1024
    assert mc.device.max_memory_allocated() >= mc.device.memory_allocated()
    assert mc.device.memory_reserved() >= mc.device.memory_allocated()
    del x
    mc.device.empty_cache()
    assert mc.device.memory_reserved() == mc.device.memory_allocated()


def test_events_count_pool_hits_and_driver_allocations_apart():
    gc.collect()
    device_pool.empty_cache()
    with count_device_events() as ev:
        a = device.empty((300,), np.float32, device.CUDA)  # nothing cached: from the driver
        del a
        gc.collect()
        b = device.empty((290,), np.float32, device.CUDA)  # same bucket: a hit
    assert (ev.allocations, ev.driver_allocations, ev.pool_hits) == (2, 1, 1)
    assert ev.driver_bytes == device_pool.bucket(1200)
    del b


def test_pool_off_sends_every_request_to_numba(monkeypatch):
    monkeypatch.setenv("MINICBAM_CUDA_POOL", "0")
    before = device_pool.stats()
    with count_device_events() as ev:
        for _ in range(3):
            device.empty((64,), np.float32, device.CUDA)
    assert ev.driver_allocations == 3 and ev.pool_hits == 0
    assert device_pool.stats()["driver_allocations"] == before["driver_allocations"]
