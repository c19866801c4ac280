"""The documentation's code runs as written: the quickstart (README's and docs/quickstart.md's, one block) and the
Flax NNX page's example are read from the files and executed, so neither can fall behind the library."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.DOTALL | re.MULTILINE)


def run_block(code: str, path: Path) -> dict:
    namespace = {"__name__": "__doc_example__"}
    exec(compile(code, str(path), "exec"), namespace)
    return namespace


def test_readme_quickstart_is_the_docs_quickstart():
    assert python_blocks(ROOT / "README.md")[0] == python_blocks(ROOT / "docs" / "quickstart.md")[0]


def test_quickstart_trains_its_own_module_with_optax_and_jit(capsys):
    path = ROOT / "docs" / "quickstart.md"
    namespace = run_block(python_blocks(path)[0], path)
    assert "loss after 100 steps:" in capsys.readouterr().out
    # Two balanced classes: about log 2 = 0.69 at the start; the memorised task ends far below it.
    assert float(namespace["loss"]) < 0.1
    # No jaxarch training code: only the layers.
    assert "jaxarch.train" not in python_blocks(path)[0]


def test_layers_page_example_composes_conv_lstm_and_attention():
    path = ROOT / "docs" / "layers.md"
    namespace = run_block(python_blocks(path)[0], path)
    logits = namespace["logits"]
    assert logits.shape == (8, 40, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_nnx_example_inits_calls_steps_the_carry_and_differentiates(capsys):
    from flax import nnx

    from jaxarch.layers import RNN, LSTMCell

    path = ROOT / "docs" / "nnx.md"
    namespace = run_block(python_blocks(path)[0], path)
    assert float(namespace["loss"]) < 0.5 * float(namespace["first_loss"])

    # The hand-stepped cell's carry equals the Linen RNN's final carry with the same parameters.
    x, carry, cell = namespace["x"], namespace["carry"], namespace["cell"]
    params = nnx.to_pure_dict(nnx.state(cell, nnx.Param))
    (c, h), outputs = RNN(LSTMCell(8), return_carry=True).apply({"params": {"cell": params}}, x)
    np.testing.assert_allclose(carry[0], c, atol=1e-5)
    np.testing.assert_allclose(carry[1], h, atol=1e-5)
    np.testing.assert_allclose(namespace["h_t"], outputs[:, -1], atol=1e-5)

    block, tokens = namespace["block"], namespace["tokens"]
    assert not jnp.array_equal(block(tokens, deterministic=False), block(tokens, deterministic=False))
    np.testing.assert_array_equal(block(tokens, deterministic=True), block(tokens, deterministic=True))
    grads = jax.tree.leaves(nnx.state(namespace["block_grads"]))
    assert grads and all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert any(float(jnp.abs(g).max()) > 0 for g in grads)


def test_nnx_example_decodes_with_the_cache_and_sows_weights():
    from flax import nnx

    from jaxarch.layers import MultiHeadAttention

    path = ROOT / "docs" / "nnx.md"
    namespace = run_block(python_blocks(path)[1], path)
    tokens, decoder = namespace["tokens"], namespace["decoder"]
    # The decoder's parameters in plain (non-decoding) attention over the whole sequence, causal.
    params = nnx.to_pure_dict(nnx.state(decoder, nnx.Param))
    reference = MultiHeadAttention(num_heads=2).apply({"params": params}, tokens, is_causal=True)
    np.testing.assert_allclose(namespace["decoded"], reference, atol=1e-5)
    weights = namespace["weights"]
    assert weights.shape == (2, 2, 6, 6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
