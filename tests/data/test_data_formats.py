"""IDX and CIFAR-10 binary files: exact round trips through tiny files written here, and a
clear ValueError / FileNotFoundError for every malformed or missing file."""

import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicbam.data import CIFAR10, MNIST, FashionMNIST, read_cifar_batch, read_idx

RNG = np.random.default_rng(0)


def idx_bytes(array, type_byte=0x08):
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload, gz):
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_mnist(folder, prefix, n, gz, hw=(28, 28)):
    images = RNG.integers(0, 256, (n, *hw), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{prefix}-images-idx3-ubyte", idx_bytes(images), gz)
    write(folder / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), gz)
    return images, labels


def cifar_bytes(images, labels):
    # One record = label byte + 3072 pixel bytes in (C, H, W) order.
    return np.concatenate([labels[:, None], images.reshape(len(labels), -1)], axis=1).tobytes()


def write_cifar(folder, names, n, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (len(names) * n, 3, 32, 32), dtype=np.uint8)
    labels = RNG.integers(0, 10, len(names) * n, dtype=np.uint8)
    for k, name in enumerate(names):
        part = slice(k * n, (k + 1) * n)
        write(folder / name, cifar_bytes(images[part], labels[part]), gz)
    return images, labels


# ------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "dtype, type_byte", [("u1", 0x08), ("i1", 0x09), ("i2", 0x0B), ("i4", 0x0C), ("f4", 0x0D)]
)
def test_read_idx_round_trips_every_type(tmp_path, gz, dtype, type_byte):
    array = RNG.integers(-100, 100, (3, 4, 5)).astype(dtype)
    path = write(tmp_path / "a-idx3", idx_bytes(array, type_byte), gz)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("position", [0, 1])
def test_read_idx_rejects_bad_magic(tmp_path, position):
    payload = bytearray(idx_bytes(np.zeros((2, 3), np.uint8)))
    payload[position] = 1  # either of the two leading zero bytes
    path = write(tmp_path / "bad", bytes(payload), gz=False)
    with pytest.raises(ValueError, match="bad IDX magic"):
        read_idx(path)


def test_read_idx_rejects_unknown_type_byte(tmp_path):
    path = write(tmp_path / "bad", idx_bytes(np.zeros((2, 3), np.uint8), 0x07), gz=False)
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_truncated_data(tmp_path, gz):
    payload = idx_bytes(np.zeros((4, 5, 5), np.uint8))[:-7]
    path = write(tmp_path / "short", payload, gz)
    with pytest.raises(ValueError, match=r"truncated.*needs 100 data bytes, got 93"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes_and_short_header(tmp_path):
    path = write(tmp_path / "long", idx_bytes(np.zeros(4, np.uint8)) + b"\0", gz=False)
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(path)
    path = write(tmp_path / "hdr", idx_bytes(np.zeros((4, 4, 4), np.uint8))[:9], gz=False)
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(path)
    path = write(tmp_path / "tiny", b"\0\0", gz=False)
    with pytest.raises(ValueError, match="too short"):
        read_idx(path)


def test_read_idx_checks_ndim(tmp_path):
    path = write(tmp_path / "a", idx_bytes(np.zeros((2, 3), np.uint8)), gz=False)
    with pytest.raises(ValueError, match="expected an IDX file with 3 dimensions, got 2"):
        read_idx(path, ndim=3)


def test_truncated_gzip_stream_is_a_value_error(tmp_path):
    compressed = gzip.compress(idx_bytes(RNG.integers(0, 255, (50, 9), dtype=np.uint8)))
    path = tmp_path / "a.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        read_idx(path)


# ---------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_mnist_round_trip(tmp_path, gz, train):
    images, labels = write_mnist(tmp_path, "train" if train else "t10k", 7, gz)
    ds = MNIST(tmp_path, train=train)
    assert len(ds) == 7
    for i in range(7):
        x, y = ds[i]
        assert x.shape == (1, 28, 28) and x.dtype == np.float32
        assert y.dtype == np.int64 and y == labels[i]
        np.testing.assert_array_equal(x[0], images[i].astype(np.float32) / np.float32(255))
    assert ds[-1][1] == labels[-1]


def test_mnist_pixel_range_is_exactly_zero_to_one(tmp_path):
    folder = tmp_path
    images = np.array([[[0, 255], [128, 1]]], np.uint8)
    write(folder / "train-images-idx3-ubyte", idx_bytes(images), gz=False)
    write(folder / "train-labels-idx1-ubyte", idx_bytes(np.array([3], np.uint8)), gz=False)
    x, _ = MNIST(folder)[0]
    assert x.min() == 0.0 and x.max() == 1.0


def test_torchvision_layout_and_fashion_mnist(tmp_path):
    _, mnist_labels = write_mnist(tmp_path / "MNIST" / "raw", "train", 3, gz=True)
    _, fashion_labels = write_mnist(tmp_path / "FashionMNIST" / "raw", "train", 4, gz=False)
    np.testing.assert_array_equal(MNIST(tmp_path).targets, mnist_labels)
    fashion = FashionMNIST(tmp_path)
    np.testing.assert_array_equal(fashion.targets, fashion_labels)
    assert fashion.classes[9] == "Ankle boot"


def test_mnist_missing_files_lists_expected_names(tmp_path):
    write_mnist(tmp_path, "train", 2, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="missing train-labels-idx1-ubyte") as info:
        MNIST(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)  # the expected list
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte, t10k-labels"):
        MNIST(tmp_path, train=False)


def test_the_plain_file_wins_over_its_gz_and_root_over_raw(tmp_path):
    # find_files' documented order: in each folder name before name.gz; root first.
    write_mnist(tmp_path, "train", 3, gz=True)
    write_mnist(tmp_path, "train", 2, gz=False)
    write_mnist(tmp_path / "MNIST" / "raw", "train", 4, gz=False)
    assert len(MNIST(tmp_path)) == 2
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / name).unlink()
    assert len(MNIST(tmp_path)) == 3


def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path, "train", 5, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)), gz=False)
    with pytest.raises(ValueError, match="holds 5 images but .* holds 4 labels"):
        MNIST(tmp_path)


def test_mnist_rejects_bad_labels_and_wrong_dims(tmp_path):
    write_mnist(tmp_path, "train", 2, gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.array([1, 10], np.uint8)), gz=False)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        MNIST(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((2, 784), np.uint8)), gz=False)
    with pytest.raises(ValueError, match="expected an IDX file with 3 dimensions"):
        MNIST(tmp_path)


def test_mnist_rejects_non_uint8_images(tmp_path):
    write_mnist(tmp_path, "train", 2, gz=False)
    floats = np.zeros((2, 28, 28), np.float32)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(floats, 0x0D), gz=False)
    with pytest.raises(ValueError, match="expected uint8"):
        MNIST(tmp_path)


def test_download_is_refused(tmp_path):
    with pytest.raises(ValueError, match="never downloads"):
        MNIST(tmp_path, download=True)
    with pytest.raises(ValueError, match="never downloads"):
        CIFAR10(tmp_path, download=True)


# ------------------------------------------------------------------------- CIFAR-10

TRAIN_NAMES = [f"data_batch_{k}.bin" for k in range(1, 6)]


def test_read_cifar_batch_round_trip(tmp_path):
    images, labels = write_cifar(tmp_path, ["b.bin"], 3)
    got_images, got_labels = read_cifar_batch(tmp_path / "b.bin")
    assert got_images.shape == (3, 3, 32, 32) and got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_cifar_channel_layout_is_rgb_planes(tmp_path):
    # First 1024 pixel bytes are red (channel 0), row-major 32x32.
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 32 + 5] = 200  # red, row 1, column 5
    record[1 + 2048] = 9  # blue, row 0, column 0
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    x, y = CIFAR10(tmp_path, train=False)[0]
    assert y == 7 and x.shape == (3, 32, 32)
    assert x[0, 1, 5] == np.float32(200) / 255 and x[2, 0, 0] == np.float32(9) / 255
    assert np.count_nonzero(x) == 2


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
@pytest.mark.parametrize("gz", [False, True])
def test_cifar10_train_and_test_round_trip(tmp_path, subfolder, gz):
    folder = tmp_path / subfolder
    images, labels = write_cifar(folder, TRAIN_NAMES, 2, gz)
    test_images, test_labels = write_cifar(folder, ["test_batch.bin"], 3, gz)
    train, test = CIFAR10(tmp_path), CIFAR10(tmp_path, train=False)
    assert (len(train), len(test)) == (10, 3)
    np.testing.assert_array_equal(train.data, images)  # batches 1..5 in order
    np.testing.assert_array_equal(train.targets, labels)
    x, y = test[2]
    assert x.dtype == np.float32 and y.dtype == np.int64 and y == test_labels[2]
    np.testing.assert_array_equal(x, test_images[2].astype(np.float32) / np.float32(255))


def test_cifar10_rejects_bad_record_size(tmp_path):
    write_cifar(tmp_path, TRAIN_NAMES, 1)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\0" * 3072)
    with pytest.raises(ValueError, match="data_batch_3.bin.*multiple of the CIFAR-10 record"):
        CIFAR10(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="positive multiple"):
        CIFAR10(tmp_path)


def test_cifar10_rejects_label_out_of_range(tmp_path):
    record = np.zeros(3073, np.uint8)
    record[0] = 10
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        CIFAR10(tmp_path, train=False)


def test_cifar10_missing_batches_are_listed(tmp_path):
    write_cifar(tmp_path, TRAIN_NAMES[:3], 1)
    with pytest.raises(FileNotFoundError, match="missing data_batch_4.bin, data_batch_5.bin"):
        CIFAR10(tmp_path)


# ------------------------------------------------- bounded reads: non-regular files, bombs
def _idx_header(dims):
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero")
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory"])
@pytest.mark.parametrize("reader", [read_idx, read_cifar_batch])
def test_non_regular_dataset_files_are_refused_before_reading(tmp_path, kind, reader):
    path = tmp_path / "train-images-idx3-ubyte"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")  # endless: reading it would never stop
    elif kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would hang
    else:
        path.mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        reader(path)


def test_a_gzip_bomb_is_not_inflated_past_the_header_shape(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(_idx_header([2, 28, 28]) + bytes(2 * 28 * 28))
        for _ in range(64):
            f.write(bytes(1 << 20))  # 64 MiB of trailing zeros, a few dozen KiB on disk
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"has trailing bytes: .* got 1569 or more"):
        read_idx(path)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 20), claimed=st.integers(0, 2**32 - 1), gz=st.booleans())
def test_idx_header_claims_are_checked_against_the_bytes(tmp_path_factory, n, claimed, gz):
    data = _idx_header([claimed, 3]) + bytes(3 * n)
    path = tmp_path_factory.mktemp("idx") / ("x-idx2-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(data) if gz else data)
    if claimed == n:
        assert read_idx(path).shape == (n, 3)
    else:
        what = "truncated" if claimed > n else "trailing bytes"
        with pytest.raises(ValueError, match=what):
            read_idx(path)
