"""The standard datasets on fixture files written in their publishers' formats: IDX headers, CIFAR's pickled
batches in a tar.gz, a text file. A fake `urlopen` serves them, and the digest table is patched with their digests,
so the real download, verification and parsing code runs and no test reaches the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from jaxarch.data import downloads, load_dataset, standard
from jaxarch.data.downloads import RemoteFile

# Real data kept beside the checkout (../shared/data from the repository root) on machines without network; a
# worktree elsewhere names the folder with JAXARCH_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("JAXARCH_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def idx_bytes(array: np.ndarray) -> bytes:
    """A gzipped IDX file of uint8 `array`: 00 00 08 ndim, big-endian uint32 dimensions, the values."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return gzip.compress(header + np.ascontiguousarray(array, np.uint8).tobytes())


def idx_files(num_train=12, num_test=7, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {"train_images": idx_bytes(rng.integers(0, 256, (num_train, 28, 28))),
            "train_labels": idx_bytes(np.arange(num_train) % 10),
            "test_images": idx_bytes(rng.integers(0, 256, (num_test, 28, 28))),
            "test_labels": idx_bytes((np.arange(num_test) + 3) % 10)}


def cifar_archive(num_per_batch=4, cifar100=False, seed=0) -> bytes:
    """The CIFAR python tarball's layout: pickled dicts with b"data" [N, 3072] uint8 (R, G, B planes) and labels."""
    rng = np.random.default_rng(seed)
    if cifar100:
        members = {"cifar-100-python/train": 2 * num_per_batch, "cifar-100-python/test": num_per_batch}
    else:
        members = {f"cifar-10-batches-py/data_batch_{i}": num_per_batch for i in range(1, 6)}
        members["cifar-10-batches-py/test_batch"] = num_per_batch
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for offset, (member, count) in enumerate(members.items()):
            batch = {b"data": rng.integers(0, 256, (count, 3072)).astype(np.uint8)}
            if cifar100:
                batch[b"fine_labels"] = [(i * 7 + offset) % 100 for i in range(count)]
                batch[b"coarse_labels"] = [(i + offset) % 20 for i in range(count)]
            else:
                batch[b"labels"] = [(i + offset) % 10 for i in range(count)]
            data = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve(monkeypatch, dataset: str, contents: dict[str, bytes]) -> dict[str, int]:
    """Patches the digest table of `dataset` with the digests of `contents` (key -> bytes) and `urlopen` to serve
    them; returns the count of requests per URL."""
    served, requests = {}, {}
    table = {}
    for key, data in contents.items():
        real = standard.REMOTE_FILES[dataset][key]
        url = f"https://example.invalid/{dataset}/{real.name}"
        table[key] = RemoteFile(real.name, url, hashlib.sha256(data).hexdigest(), len(data))
        served[url] = data
    monkeypatch.setitem(standard.REMOTE_FILES, dataset, table)

    def fake_urlopen(url, timeout=None):
        requests[url] = requests.get(url, 0) + 1
        if url not in served:
            raise urllib.error.URLError("no such fixture")
        return io.BytesIO(served[url])

    monkeypatch.setattr(downloads, "urlopen", fake_urlopen)
    return requests


def go_offline(monkeypatch):
    def no_network(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(downloads, "urlopen", no_network)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    monkeypatch.setenv("JAXARCH_DATA_DIR", str(folder))
    monkeypatch.delenv("JAXARCH_OFFLINE", raising=False)
    go_offline(monkeypatch)  # A test that forgets to serve its files fails instead of downloading.
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name.startswith("."))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets_download_verify_and_parse(monkeypatch, data_dir, name):
    files = idx_files()
    requests = serve(monkeypatch, name, files)
    dataset = load_dataset(name, validation_size=2)
    assert len(requests) == 4 and set(requests.values()) == {1}
    assert dataset.task == "classification" and dataset.num_outputs == 10 and dataset.input_shape == (28, 28, 1)
    assert dataset.split_names() == ("validation", "test")
    with gzip.open(data_dir / name / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(12, 28, 28)
    np.testing.assert_array_equal(dataset.train_inputs[..., 0], images[:10])
    np.testing.assert_array_equal(dataset.splits["validation"][0][..., 0], images[10:])
    np.testing.assert_array_equal(dataset.train_targets, np.arange(10) % 10)
    # Standardised with the 10 training images' statistics.
    batch = dataset.train_batch(seed=0, step=0, batch_size=10)
    assert batch["inputs"].dtype == np.float32
    np.testing.assert_allclose(batch["inputs"].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(batch["inputs"].std(), 1.0, atol=1e-4)
    test = next(dataset.eval_batches("test", 8))
    np.testing.assert_array_equal(test["mask"], np.arange(8) < 7)
    np.testing.assert_array_equal(test["targets"][:7], (np.arange(7) + 3) % 10)
    # The second load reads the cache and asks the network nothing.
    go_offline(monkeypatch)
    load_dataset(name)
    assert leftovers(data_dir) == []


def test_cifar10_layout_and_crop_flip(monkeypatch, data_dir):
    archive = cifar_archive()
    serve(monkeypatch, "cifar10", {"archive": archive})
    dataset = load_dataset("cifar10", augment="crop_flip")
    assert dataset.num_outputs == 10 and dataset.input_shape == (32, 32, 3) and dataset.num_train == 20
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        first = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    # Row 0 of the first batch: 1024 red values, then green, then blue, each row-major over 32 x 32.
    image = dataset.train_inputs[0]
    np.testing.assert_array_equal(image[..., 0].ravel(), first[b"data"][0, :1024])
    np.testing.assert_array_equal(image[5, 7], first[b"data"][0, [5 * 32 + 7, 1024 + 5 * 32 + 7, 2048 + 5 * 32 + 7]])
    np.testing.assert_array_equal(dataset.train_targets[:4], first[b"labels"])
    assert dataset.splits["test"][0].shape == (4, 32, 32, 3)
    mean = dataset.train_inputs.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(dataset.input_mean, mean, rtol=1e-5)
    whole = dataset.train_batch(seed=3, step=1, batch_size=8)
    part = dataset.train_batch(seed=3, step=1, batch_size=8, rows=slice(4, 8))
    np.testing.assert_array_equal(part["inputs"], whole["inputs"][4:])
    plain = load_dataset("cifar10").train_batch(seed=3, step=1, batch_size=8)
    np.testing.assert_array_equal(plain["targets"], whole["targets"])
    assert not np.array_equal(plain["inputs"], whole["inputs"])


@pytest.mark.parametrize("labels,classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_labels(monkeypatch, labels, classes):
    serve(monkeypatch, "cifar100", {"archive": cifar_archive(cifar100=True)})
    dataset = load_dataset("cifar100", labels=labels)
    assert dataset.num_outputs == classes and dataset.num_train == 8
    expected = [(i * 7) % 100 for i in range(8)] if labels == "fine" else [i % 20 for i in range(8)]
    np.testing.assert_array_equal(dataset.train_targets, expected)


def test_a_file_put_in_the_cache_by_hand_is_used_offline(monkeypatch, data_dir):
    files = idx_files()
    serve(monkeypatch, "mnist", files)
    go_offline(monkeypatch)
    table = standard.REMOTE_FILES["mnist"]
    (data_dir / "mnist").mkdir(parents=True)
    for key, data in files.items():
        (data_dir / "mnist" / table[key].name).write_bytes(data)
    assert load_dataset("mnist").num_train == 12


def test_the_real_digest_table_is_checked(monkeypatch, data_dir):
    """Without patching the table, a file on disk is compared with the digest written in the code."""
    folder = data_dir / "tinyshakespeare"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    with pytest.raises(ValueError, match="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"):
        load_dataset("tinyshakespeare")


def test_offline_and_missing_names_file_digest_url_and_folder(monkeypatch, data_dir):
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10")
    message = str(err.value)
    for part in ["cifar-10-python.tar.gz", "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                 "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(data_dir / "cifar10"),
                 "name resolution"]:
        assert part in message
    assert leftovers(data_dir) == [] and not (data_dir / "cifar10" / "cifar-10-python.tar.gz").exists()
    monkeypatch.setenv("JAXARCH_OFFLINE", "1")
    with pytest.raises(ValueError, match="JAXARCH_OFFLINE"):
        load_dataset("mnist")


def test_a_download_with_the_wrong_digest_is_discarded(monkeypatch, data_dir):
    files = idx_files()
    serve(monkeypatch, "mnist", files)
    table = dict(standard.REMOTE_FILES["mnist"])
    wrong = "0" * 64
    table["train_images"] = RemoteFile(table["train_images"].name, table["train_images"].url, wrong, 1)
    monkeypatch.setitem(standard.REMOTE_FILES, "mnist", table)
    with pytest.raises(ValueError, match=f"expected {wrong}; it was discarded"):
        load_dataset("mnist")
    assert not (data_dir / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(data_dir) == []


def test_a_connection_cut_mid_download_leaves_nothing(monkeypatch, data_dir):
    archive = cifar_archive()
    serve(monkeypatch, "cifar10", {"archive": archive})

    class Cut(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 1000:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(min(size, 1000))

    monkeypatch.setattr(downloads, "urlopen", lambda url, timeout=None: Cut(archive))
    with pytest.raises(ValueError, match="could not be downloaded from .*Connection reset by peer"):
        load_dataset("cifar10")
    assert list((data_dir / "cifar10").iterdir()) == []


def test_truncated_or_corrupt_file_in_the_cache(monkeypatch, data_dir):
    archive = cifar_archive()
    serve(monkeypatch, "cifar10", {"archive": archive})
    path = data_dir / "cifar10" / "cifar-10-python.tar.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(archive[:len(archive) // 2])
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, expected [0-9a-f]{64}: it is incomplete"):
        load_dataset("cifar10")
    assert path.read_bytes() == archive[:len(archive) // 2]  # the user's file is left for them to look at


def test_parsers_reject_damaged_files_that_pass_the_digest(monkeypatch, tmp_path):
    """A file whose digest was recorded wrongly (or a fixture) still fails with a clear error, not a trace."""
    files = idx_files()
    good = gzip.decompress(files["train_images"])
    files["train_images"] = gzip.compress(good[:-5])
    serve(monkeypatch, "mnist", files)
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_dataset("mnist")
    serve(monkeypatch, "cifar10", {"archive": b"not a tarball"})
    with pytest.raises(ValueError, match="not a readable CIFAR python archive"):
        load_dataset("cifar10")


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown option 'augmnt'.*augment"):
        load_dataset("cifar10", augmnt="crop_flip")
    with pytest.raises(ValueError, match="augment is 'flip', expected one of"):
        load_dataset("mnist", augment="flip")


def test_tinyshakespeare_from_a_fixture(monkeypatch):
    text = "".join(f"CITIZEN {i}:\nWe are accounted poor citizens, the patricians good.\n\n" for i in range(60))
    serve(monkeypatch, "tinyshakespeare", {"text": text.encode()})
    corpus = load_dataset("tinyshakespeare", seq_len=16)
    assert corpus.name == "tinyshakespeare" and corpus.input_shape == (16,)
    batch = corpus.train_batch(seed=0, step=0, batch_size=4)
    assert corpus.decode(batch["inputs"][0]) in text


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"Tiny Shakespeare is not at {SHAKESPEARE}")
def test_tinyshakespeare_real_file_offline(monkeypatch, data_dir):
    (data_dir / "tinyshakespeare").mkdir(parents=True)
    shutil.copy(SHAKESPEARE, data_dir / "tinyshakespeare" / "input.txt")
    corpus = load_dataset("tinyshakespeare")
    assert len(corpus.train_ids) + len(corpus.validation_ids) == 1115394
    assert corpus.num_outputs == 66  # 65 characters and the unknown id
    assert corpus.decode(corpus.train_ids[:14]) == "First Citizen:"


def test_the_command_line_exits_2_before_compiling_when_offline(tmp_path, data_dir, capsys):
    from jaxarch.cli import main

    code = main(["run", "--workdir", str(tmp_path / "run"), "--no-progress", "fashion-mnist-cnn"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and str(data_dir / "fashion_mnist") in err
    assert not (tmp_path / "run" / "checkpoints").exists()
