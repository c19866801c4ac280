"""The character corpus: deterministic default text, windows and targets, and clear errors for bad files."""

import numpy as np
import pytest

from jaxarch.data import load_dataset


def test_stdlib_corpus_is_deterministic_and_split():
    a = load_dataset("text", max_chars=100_000, seq_len=32)
    b = load_dataset("text", max_chars=100_000, seq_len=32)
    np.testing.assert_array_equal(a.train_ids, b.train_ids)
    assert len(a.train_ids) == 90_000 and len(a.validation_ids) == 10_000
    assert a.name == "python-stdlib" and "def " in a.decode(a.train_ids[:20_000])


def test_targets_are_the_next_characters(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 20)
    corpus = load_dataset("text", text_file=str(path), seq_len=5)
    batch = corpus.train_batch(0, 3, 4)
    for x, y in zip(batch["inputs"], batch["targets"]):
        text_x, text_y = corpus.decode(x), corpus.decode(y)
        assert text_x[1:] == text_y[:-1]
        assert text_y[-1] == chr((ord(text_x[-1]) - ord("a") + 1) % 10 + ord("a"))
    (val,) = list(corpus.eval_batches("validation", 64))
    assert val["mask"].sum() >= 1


def test_unknown_characters_in_validation_map_to_id_zero(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab" * 90 + "zz" * 10)
    corpus = load_dataset("text", text_file=str(path), seq_len=4)
    assert corpus.alphabet == "ab" and corpus.num_outputs == 3
    assert (corpus.validation_ids == 0).all()


def test_missing_or_empty_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="text_file .*nope.txt' does not exist"):
        load_dataset("text", text_file=str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        load_dataset("text", text_file=str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match="too few for seq_len=128"):
        load_dataset("text", text_file=str(tmp_path / "short.txt"))
