"""Using a finished run: `jaxarch.load_run`, `jaxarch generate` and `jaxarch evaluate` on tiny trained runs of a
GPT and an LSTM, read without writing or printing anything; the generation paths against the model's own forward
pass; and a rerun with another text file named for what it is."""

import contextlib
import io
import json
import os
import re
import stat

import jax
import numpy as np
import pytest

import jaxarch
from jaxarch.cli import main
from jaxarch.generate import continue_ids
from jaxarch.models.recurrent import RecurrentNet
from jaxarch.models.transformer import GPT
from jaxarch.sampling import sample_by_recompute
from jaxarch.train.checkpoint import CHECKPOINTS

# English text with a small alphabet: a few training steps, and the default prompt must come from it.
_WORDS = "the quick brown fox jumps over a lazy dog and then runs far away into the quiet woods".split()
_TINY = ["data.seq_len=16", "data.max_eval_windows=8", "train.steps=4", "train.batch_size=4",
         "train.eval_batch_size=8", "train.log_every=2", "sample.num_tokens=12"]
_MODELS = {
    "charlm-gpt": ["model.embed_dim=16", "model.num_layers=1", "model.num_heads=2", "model.max_length=16"],
    "charlm-lstm": ["model.hidden_sizes=(16,)", "model.embed_dim=8"],
}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("text") / "english.txt"
    path.write_text(" ".join(rng.choice(_WORDS, 400)) + "\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, text_file):
    """Each language-model experiment trained for 4 steps from the command line: {name: (run_dir, final JSON)}."""
    trained = {}
    for name, model in _MODELS.items():
        workdir = tmp_path_factory.mktemp(name) / "run"
        args = ["run", name, f"data.text_file={text_file}", *_TINY, *model, "--workdir", str(workdir), "--no-progress"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args) == 0
        trained[name] = (workdir, _last_json(out.getvalue()))
    return trained


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _metrics(result: dict) -> dict:
    return {key: value for key, value in result.items() if key.startswith("validation_")}


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_evaluate_from_the_command_line_gives_the_runs_own_final_metrics(runs, name, capsys):
    run_dir, final = runs[name]
    assert main(["evaluate", str(run_dir)]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["step"] == final["steps"] == final["best_checkpoint_step"]
    assert result["experiment"] == name
    assert _metrics(result) == pytest.approx(_metrics(final), rel=1e-6)
    assert set(_metrics(result)) == {"validation_loss", "validation_bits_per_token", "validation_accuracy"}


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_load_run_from_python_evaluates_applies_and_generates(runs, name):
    run_dir, final = runs[name]
    run = jaxarch.load_run(run_dir)
    assert (run.step, run.steps, run.best_step) == (4, (4,), 4)
    assert isinstance(run.model, GPT if name == "charlm-gpt" else RecurrentNet)
    assert sum(x.size for x in jax.tree.leaves(run.params)) == final["params"]
    assert run.batch_stats is None
    metrics = run.evaluate()
    assert {key.replace("/", "_"): value for key, value in metrics.items()} == pytest.approx(_metrics(final),
                                                                                              rel=1e-6)
    assert run.evaluate("validation") == metrics
    ids = np.asarray([run.dataset.encode("the quick brown ")])
    assert run.apply(ids).shape == (1, 16, run.dataset.vocab_size)
    text = run.generate("the ", 20, temperature=0.8, seed=3)
    assert len(text) == 20 and text == run.generate("the ", 20, temperature=0.8, seed=3)
    assert run.generate("the ", 20, seed=4) != text or run.generate("the ", 20, seed=5) != text
    # Past the training window (and a GPT's context of 16): the cache, then recomputation; the cell, for the LSTM.
    assert len(run.generate(num_tokens=40, temperature=0)) == 40


def test_generate_from_the_command_line_continues_the_held_out_text(runs, capsys, text_file):
    run_dir, _ = runs["charlm-gpt"]
    run = jaxarch.load_run(run_dir)
    held_out = text_file.read_text()[int(len(text_file.read_text()) * 0.9):]
    prompt = run.default_prompt()
    assert prompt and held_out.startswith(prompt) and "def " not in prompt
    # The run's own sample (sample.txt) starts from the same prompt.
    assert (run_dir / "sample.txt").read_text().startswith(prompt)
    capsys.readouterr()
    assert main(["generate", str(run_dir), "--num-tokens", "25", "--temperature", "0.5", "--top-k", "3",
                 "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and len(out.rstrip("\n")) == len(prompt) + 25
    assert main(["generate", str(run_dir), "--prompt", "over ", "--num-tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert out == "over " + run.generate("over ", 5, temperature=0)


def _tree_snapshot(root):
    return sorted((str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in [root, *root.rglob("*")])


def test_load_run_reads_a_read_only_directory_without_writing_or_printing(runs, capfd):
    run_dir, final = runs["charlm-lstm"]
    before = _tree_snapshot(run_dir)
    modes = {path: path.stat().st_mode for path in [run_dir, *run_dir.rglob("*")]}
    for path in modes:
        path.chmod(stat.S_IMODE(modes[path]) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        capfd.readouterr()
        run = jaxarch.load_run(run_dir, step="latest")
        run.evaluate()
        run.generate(num_tokens=3)
        captured = capfd.readouterr()
        assert captured.out == "" and captured.err == ""  # Not even orbax's "Given directory is read only".
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    # Root ignores the permissions: the snapshot is what shows that nothing was created, removed or touched.
    assert _tree_snapshot(run_dir) == before
    assert run.step == final["steps"]


def test_load_run_errors_name_what_is_wrong(runs, tmp_path, capsys):
    run_dir, _ = runs["charlm-gpt"]
    with pytest.raises(ValueError, match=r"load_run: step is 3, expected 'best', 'latest' or one of the "
                                         r"checkpointed steps \[4\]"):
        jaxarch.load_run(run_dir, step=3)
    with pytest.raises(ValueError, match=r"has no config.json, expected the work directory of a run"):
        jaxarch.load_run(tmp_path)
    with pytest.raises(ValueError, match=r"evaluate: split is 'test', expected one of \['validation'\]"):
        jaxarch.load_run(run_dir).evaluate("test")
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["generate", str(run_dir), "--top-k", "1000"]) == 2
    assert "top_k is 1000, expected <= the vocabulary size" in capsys.readouterr().err


def test_rerunning_with_another_text_file_names_the_config_key_first(runs, tmp_path, capsys, text_file):
    run_dir, _ = runs["charlm-gpt"]
    other = tmp_path / "other.txt"
    other.write_text("".join(chr(ord("A") + i % 40) for i in range(600)))
    before = _tree_snapshot(run_dir / CHECKPOINTS), (run_dir / "config.json").read_text()
    args = ["run", "charlm-gpt", f"data.text_file={other}", *_TINY, *_MODELS["charlm-gpt"], "--workdir",
            str(run_dir), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"data.text_file: saved '{text_file}', now '{other}'" in err
    assert err.index("data.text_file") < err.index("token_embedding")  # the cause before the symptom
    assert f"rerun with data.text_file={text_file}" in err
    # --restart is only ever mentioned with what it deletes.
    mentions = [match.start() for match in re.finditer("--restart", err)]
    assert mentions and all("delet" in err[start:start + 100] for start in mentions)
    assert (_tree_snapshot(run_dir / CHECKPOINTS), (run_dir / "config.json").read_text()) == before


def _random_variables(model, vocab, seed=0):
    return model.init(jax.random.PRNGKey(seed), np.zeros((1, 5), np.int32))


@pytest.mark.parametrize("cell,hidden_sizes,residual", [("lstm", (7, 7), True), ("gru", (6, 11), False)])
def test_stepping_a_recurrent_language_model_matches_its_forward_pass(cell, hidden_sizes, residual):
    """Greedy tokens from stepping the cells equal greedy tokens from the whole model recomputed over the whole
    history: the carry crosses from the prompt into the new tokens exactly as in the model's own scan."""
    vocab = 13
    model = RecurrentNet(num_outputs=vocab, cell=cell, hidden_sizes=hidden_sizes, residual=residual,
                         readout="sequence", vocab_size=vocab, embed_dim=7)
    variables = _random_variables(model, vocab)
    prompt = np.array([3, 1, 4, 1, 5], np.int32)
    stepped = continue_ids(model, variables, prompt, 9, rng=jax.random.PRNGKey(0), temperature=0)
    recomputed = sample_by_recompute(model.apply, variables, prompt, 9, window=20, rng=jax.random.PRNGKey(0),
                                     temperature=0)
    np.testing.assert_array_equal(stepped, recomputed)
    assert len(set(stepped.tolist())) > 1  # a constant sequence would hide a lost carry


def test_gpt_generation_continues_past_its_context_by_recomputing():
    vocab = 11
    model = GPT(num_outputs=vocab, embed_dim=16, num_layers=1, num_heads=2, max_length=8)
    variables = _random_variables(model, vocab, seed=1)
    prompt = np.array([2, 7, 1], np.int32)
    # 3 + 14 > max_length 8: five tokens from the cache, the rest from a sliding window of 8.
    tokens = continue_ids(model, variables, prompt, 14, rng=jax.random.PRNGKey(0), temperature=0)
    recomputed = sample_by_recompute(model.apply, variables, prompt, 14, window=8, rng=jax.random.PRNGKey(0),
                                     temperature=0)
    np.testing.assert_array_equal(tokens, recomputed)
    assert tokens.shape == (14,) and len(set(tokens.tolist())) > 1
    with pytest.raises(ValueError, match=r"prompt length \+ num_tokens is 3 \+ 14, expected <= max_length 8 .*"
                                         r"continue_ids"):
        jaxarch.generate.generate(model, variables["params"], prompt, 14, rng=jax.random.PRNGKey(0))


def test_importing_jaxarch_loads_no_jax_until_load_run_is_used():
    import subprocess
    import sys

    code = ("import sys, jaxarch; assert 'jax' not in sys.modules; f = jaxarch.load_run; "
            "assert 'jax' in sys.modules and f.__module__ == 'jaxarch.runs'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
