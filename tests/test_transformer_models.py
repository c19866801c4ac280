"""The Transformer models: shapes, causality, scanned == unrolled, cached generation == recomputation, readable
errors, and a short training run per attention experiment.

Sizes differ on every axis: batch 2, time 7, vocab 13 (outputs 11 where they may differ), features 3,
embed_dim 12 over 3 heads, 2 layers.
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch import experiments
from jaxarch.generate import generate
from jaxarch.models import MODELS
from jaxarch.train import train_and_evaluate
from jaxarch.train.configure import override_config

B, T, V, F = 2, 7, 13, 3
SMALL = dict(embed_dim=12, num_layers=2, num_heads=3, mlp_ratio=1.5)


def ids(seed, shape=(B, T), vocab=V):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def features(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def scaled_init(model, *args, scale=0.5, **kwargs):
    """Parameters redrawn at a larger scale than the 0.02 embeddings, so outputs differ visibly by input."""
    # Only the parameters' shapes are needed: an eager init ran for seconds, each of its ops compiled on first use.
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [scale * jax.random.normal(key, leaf.shape) for key, leaf in zip(keys, leaves)]
    return {"params": jax.tree.unflatten(tree, leaves)}


# ---- shapes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "none"])
@pytest.mark.parametrize("tie", [True, False])
def test_gpt_shapes(positions, tie):
    vocab = V if tie else V + 4  # untied: an input vocabulary of 17 beside 13 outputs
    model = MODELS.get("gpt")(num_outputs=V, vocab_size=vocab, max_length=9, positions=positions,
                              tie_embeddings=tie, **SMALL)
    variables = model.init(jax.random.PRNGKey(0), ids(0, vocab=vocab))
    out = model.apply(variables, ids(1, vocab=vocab))
    chex.assert_shape(out, (B, T, V))
    chex.assert_tree_all_finite(out)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_transformer_classifier_shapes(pooling):
    model = MODELS.get("transformer")(num_outputs=5, pooling=pooling, stem=(4,), max_length=11, **SMALL)
    x = features(0, (B, T, F))
    out = model.apply(model.init(jax.random.PRNGKey(0), x), x)
    chex.assert_shape(out, (B, 5))
    tokens = MODELS.get("transformer")(num_outputs=1, vocab_size=V, pad_id=0, pooling=pooling,
                                       positions="sinusoidal", **SMALL)
    out = tokens.apply(tokens.init(jax.random.PRNGKey(0), ids(0)), ids(1))
    chex.assert_shape(out, (B, 1))


def test_transformer_padding_is_ignored():
    model = MODELS.get("transformer")(num_outputs=5, vocab_size=V, pad_id=0, pooling="mean", **SMALL)
    x = ids(0).at[:, 4:].set(0)  # the last three tokens are padding
    variables = scaled_init(model, x)
    moved = jnp.concatenate([x[:, :4], jnp.zeros((B, 5), jnp.int32)], axis=1)  # longer padding, same content
    np.testing.assert_allclose(model.apply(variables, x), model.apply(variables, moved), atol=1e-5)


@pytest.mark.parametrize("shape,patch,tokens", [((B, 12, F), 4, 3), ((B, 6, 10, F), (3, 2), 10)])
@pytest.mark.parametrize("stem", [(), (4,)])
def test_vit_shapes_1d_and_2d(shape, patch, tokens, stem):
    model = MODELS.get("vit")(num_outputs=5, patch_size=patch, stem=stem, **SMALL)
    x = features(0, shape)
    variables = model.init(jax.random.PRNGKey(0), x)
    chex.assert_shape(model.apply(variables, x), (B, 5))
    chex.assert_shape(variables["params"]["position_embedding"]["embedding"], (tokens + 1, 12))  # + CLS


def test_encoder_decoder_shapes_packed_equals_explicit():
    model = MODELS.get("encoder_decoder")(num_outputs=V, vocab_size=V + 4, source_length=5, **SMALL)
    source, target = ids(0, (B, 5), V + 4), ids(1, (B, T))
    variables = model.init(jax.random.PRNGKey(0), source, target)
    explicit = model.apply(variables, source, target)
    chex.assert_shape(explicit, (B, T, V))
    packed = model.apply(variables, jnp.concatenate([source, target], axis=1))
    np.testing.assert_allclose(packed, explicit, atol=1e-6)


def test_encoder_decoder_causal_and_ignores_source_padding():
    model = MODELS.get("encoder_decoder")(num_outputs=V, pad_id=0, **SMALL)
    source, target = ids(0, (B, 5)).at[:, 3:].set(0), ids(1, (B, T))
    variables = scaled_init(model, source, target)
    out = model.apply(variables, source, target)
    changed_future = model.apply(variables, source, target.at[:, 4:].set(1))
    np.testing.assert_allclose(changed_future[:, :4], out[:, :4], atol=1e-5)
    assert not np.allclose(changed_future[:, 4:], out[:, 4:], atol=1e-3)
    longer_padding = jnp.concatenate([source[:, :3], jnp.zeros((B, 4), jnp.int32)], axis=1)
    np.testing.assert_allclose(model.apply(variables, longer_padding, target), out, atol=1e-5)


def test_encoder_decoder_learns_to_reverse():
    import optax

    model = MODELS.get("encoder_decoder")(num_outputs=V, embed_dim=32, num_layers=1, num_heads=4)
    tx = optax.adam(3e-3)

    def batch(step):
        source = ids(step, (32, 6), V - 1) + 1  # ids 1..12; 0 is the start id
        target = source[:, ::-1]
        return source, jnp.concatenate([jnp.zeros((32, 1), jnp.int32), target[:, :-1]], axis=1), target

    def loss_fn(params, source, decoder_inputs, target):
        logits = model.apply({"params": params}, source, decoder_inputs)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, target))

    @jax.jit
    def step(params, opt_state, source, decoder_inputs, target):
        loss, grads = jax.value_and_grad(loss_fn)(params, source, decoder_inputs, target)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    params = model.init(jax.random.PRNGKey(0), *batch(0)[:2])["params"]
    opt_state = tx.init(params)
    losses = []
    for i in range(150):
        params, opt_state, loss = step(params, opt_state, *batch(i))
        losses.append(float(loss))
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10]), losses[::10]


# ---- GPT behaviour --------------------------------------------------------------------------------------------


def test_gpt_is_causal():
    """d logits[:, t] / d position_row[s] is zero for s > t (and not for s <= t); future tokens change nothing."""
    model = MODELS.get("gpt")(num_outputs=V, max_length=T, **SMALL)
    x = ids(0)
    variables = scaled_init(model, x)

    def output_at(table, t):
        params = {**variables["params"], "position_embedding": {"embedding": table}}
        return jnp.sum(model.apply({"params": params}, x)[:, t])

    table = variables["params"]["position_embedding"]["embedding"]  # [T, embed_dim]
    for t in range(T):
        row_norms = jnp.linalg.norm(jax.grad(output_at)(table, t), axis=-1)  # [T]
        assert np.all(row_norms[t + 1:] == 0.0), (t, row_norms)
        assert np.all(row_norms[:t + 1] > 0.0), (t, row_norms)
    changed = model.apply(variables, x.at[:, 4:].set((x[:, 4:] + 1) % V))
    np.testing.assert_allclose(changed[:, :4], model.apply(variables, x)[:, :4], atol=1e-5)


def test_gpt_relative_bias_is_causal_and_shared_by_the_layers():
    model = MODELS.get("gpt")(num_outputs=V, max_length=T, positions="none", relative_bias=True, **SMALL)
    x = ids(0)
    variables = scaled_init(model, x)
    assert "position_embedding" not in variables["params"]
    chex.assert_shape(variables["params"]["relative_position_bias"]["embedding"], (T, SMALL["num_heads"]))
    changed = model.apply(variables, x.at[:, 4:].set((x[:, 4:] + 1) % V))
    np.testing.assert_allclose(changed[:, :4], model.apply(variables, x)[:, :4], atol=1e-5)
    assert not np.allclose(changed[:, 4:], model.apply(variables, x)[:, 4:], atol=1e-3)

def _stack_layers(params, num_layers):
    """Unrolled `layers_i` subtrees -> one `layers` subtree with a leading layer axis (the nn.scan layout)."""
    decoder = dict(params["decoder"])
    layers = [decoder.pop(f"layers_{i}") for i in range(num_layers)]
    decoder["layers"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)
    return {**params, "decoder": decoder}


def test_gpt_scan_layers_equals_unrolled():
    unrolled = MODELS.get("gpt")(num_outputs=V, max_length=T, positions="rope", **SMALL)
    scanned = unrolled.clone(scan_layers=True)
    x = ids(0)
    variables = scaled_init(unrolled, x)
    stacked = {"params": _stack_layers(variables["params"], SMALL["num_layers"])}
    chex.assert_trees_all_equal_shapes(stacked, scanned.init(jax.random.PRNGKey(0), x))
    np.testing.assert_allclose(scanned.apply(stacked, x), unrolled.apply(variables, x), atol=1e-5)


@pytest.mark.parametrize("positions,relative_bias", [("learned", False), ("rope", False), ("none", True),
                                                      ("learned", True)])
def test_generate_greedy_equals_full_forward(positions, relative_bias):
    model = MODELS.get("gpt")(num_outputs=V, max_length=16, positions=positions, relative_bias=relative_bias,
                              **SMALL)
    prompt = ids(0, (B, 5))
    # Larger weights where the relative bias joins: at 0.3 its greedy continuation repeats a single token.
    variables = scaled_init(model, prompt, scale=1.0 if relative_bias else 0.3)
    generated = generate(model, variables["params"], prompt, 8, rng=jax.random.PRNGKey(0), temperature=0.0)
    chex.assert_shape(generated, (B, 8))
    sequence = prompt
    for _ in range(8):  # the reference: the whole prefix through the model for every new token
        next_token = jnp.argmax(model.apply(variables, sequence)[:, -1], axis=-1).astype(jnp.int32)
        sequence = jnp.concatenate([sequence, next_token[:, None]], axis=1)
    np.testing.assert_array_equal(generated, sequence[:, 5:])
    assert len(set(np.asarray(generated).ravel().tolist())) > 1  # not a degenerate constant continuation
    top_1 = generate(model, variables["params"], prompt, 8, rng=jax.random.PRNGKey(3), temperature=0.7, top_k=1)
    np.testing.assert_array_equal(top_1, generated)
    sampled = generate(model, variables["params"], prompt[0], 8, rng=jax.random.PRNGKey(3), temperature=1.0)
    chex.assert_shape(sampled, (8,))
    assert np.all((np.asarray(sampled) >= 0) & (np.asarray(sampled) < V))


# ---- errors ---------------------------------------------------------------------------------------------------


def _init(name, x, **options):
    model = MODELS.get(name)(**{**SMALL, **options})
    return model.init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("name,x,options,pattern", [
    ("gpt", jnp.zeros((B, T, F), jnp.int32), dict(num_outputs=V), r"GPT: inputs rank is 3 .*\[batch, time\]"),
    ("gpt", jnp.zeros((B, T)), dict(num_outputs=V), r"GPT: inputs dtype is float32, expected an integer"),
    ("gpt", jnp.zeros((B, T), jnp.int32), dict(num_outputs=V, max_length=5), r"GPT: inputs time length is 7"),
    ("gpt", jnp.zeros((B, T), jnp.int32), dict(num_outputs=V, vocab_size=V + 1),
     r"GPT: vocab_size with tie_embeddings is 14"),
    ("gpt", jnp.zeros((B, T), jnp.int32), dict(num_outputs=V, positions="alibi"), r"GPT: positions is 'alibi'"),
    ("gpt", jnp.zeros((B, T), jnp.int32), dict(num_outputs=V, relative_bias=True, relative_max_distance=0),
     r"RelativePositionBias: max_distance is 0"),
    ("transformer", jnp.zeros((B, T)), dict(num_outputs=5), r"TransformerClassifier: inputs rank is 2"),
    ("transformer", jnp.zeros((B, T, F), jnp.int32), dict(num_outputs=5),
     r"TransformerClassifier: inputs dtype is int32, expected a floating"),
    ("transformer", jnp.zeros((B, T), jnp.int32), dict(num_outputs=5, vocab_size=V, stem=(4,)),
     r"TransformerClassifier: stem with token inputs"),
    ("transformer", jnp.zeros((B, T, F)), dict(num_outputs=5, pooling="max"),
     r"TransformerClassifier: pooling is 'max'"),
    ("vit", jnp.zeros((B, 10, F)), dict(num_outputs=5, patch_size=4),
     r"ViT: inputs spatial shape is \(10,\) .* multiples of patch_size \(4,\)"),
    ("vit", jnp.zeros((B, 8, 6, F)), dict(num_outputs=5, patch_size=4),
     r"ViT: inputs spatial shape is \(8, 6\)"),
    ("vit", jnp.zeros((B, 8, 8, F)), dict(num_outputs=5, patch_size=(2, 2, 2)), r"ViT: patch_size is \(2, 2, 2\)"),
    ("vit", jnp.zeros((B, 8, 8, 8, F)), dict(num_outputs=5), r"ViT: inputs rank is 5"),
    ("vit", jnp.zeros((B, 8, F), jnp.int32), dict(num_outputs=5), r"ViT: inputs dtype is int32"),
    ("encoder_decoder", jnp.zeros((B, T), jnp.int32), dict(num_outputs=V),
     r"EncoderDecoder: source_length with packed inputs is 0"),
    ("encoder_decoder", jnp.zeros((B, T)), dict(num_outputs=V), r"EncoderDecoder: inputs dtype is float32"),
])
def test_readable_errors(name, x, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        _init(name, x, **options)


def test_generate_errors():
    model = MODELS.get("gpt")(num_outputs=V, max_length=10, **SMALL)
    params = model.init(jax.random.PRNGKey(0), ids(0, (B, 3)))["params"]
    rng = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"generate: prompt length \+ num_tokens is 3 \+ 8, expected <= max_length 10"):
        generate(model, params, ids(0, (B, 3)), 8, rng=rng)
    with pytest.raises(ValueError, match=r"generate: prompt_ids dtype is float32"):
        generate(model, params, jnp.zeros((B, 3)), 2, rng=rng)
    with pytest.raises(ValueError, match=r"generate: temperature is -1.0"):
        generate(model, params, ids(0, (B, 3)), 2, rng=rng, temperature=-1.0)


# ---- each attention experiment learns -------------------------------------------------------------------------

TINY = ["optim.schedule=constant", "optim.warmup_steps=3", "optim.learning_rate=3e-3", "train.eval_every=0",
        "train.log_every=10", "train.checkpoint_every=0", "train.batch_size=64", "train.steps=60"]
# The image experiments' regularisers (augmentation, dropout) are for long runs; a tiny run checks learning.
PLAIN_TRAINING = ["data.shift_augment=0", "model.dropout_rate=0.0"]
EXPERIMENTS = {
    "charlm-gpt": ["data.seq_len=32", "data.max_chars=60000", "model.max_length=32", "model.embed_dim=32",
                   "model.num_layers=1", "train.eval_batch_size=64", "data.max_eval_windows=64",
                   "sample.num_tokens=4"],
    "copy-transformer": ["data.seq_len=12", "model.max_length=32", "model.implementation=xla",
                         "data.test_size=100"],
    "copy-transformer-short": ["data.seq_len=12", "model.max_length=32", "model.implementation=xla",
                               "data.test_size=100"],
    "adding-transformer": ["data.seq_len=20", "data.test_size=100"],
    "mnist1d-transformer": ["model.embed_dim=16", "model.num_layers=1", "model.stem=(8,)", *PLAIN_TRAINING],
    "mnist1d-transformer-plain": ["model.embed_dim=16", "model.num_layers=1", "data.shift_augment=0",
                                  "optim.learning_rate=1e-2"],
    "digits-vit": ["model.embed_dim=16", "model.num_layers=1", "model.stem=(8,)", *PLAIN_TRAINING],
    "digits-vit-plain": ["model.embed_dim=16", "model.num_layers=1", "data.shift_augment=0"],
}


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.usefixtures("_cache")
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_each_attention_experiment_learns(name, tmp_path):
    config = override_config(experiments.get_config(name), [*TINY, *EXPERIMENTS[name]])
    result = train_and_evaluate(config, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses  # At least 15% below the first 10 steps' mean.
    assert result["experiment"] == name and result["params"] > 0


def test_copy_transformer_short_can_warm_start_copy_transformer():
    """The curriculum's two stages build train states of one structure, so `train.init_from` accepts the first."""
    from jaxarch.train import init_state
    from jaxarch.train.checkpoint import _leaf_signatures
    from jaxarch.train.loop import build_dataset_and_model

    signatures = []
    for name in ("copy-transformer-short", "copy-transformer"):
        config = override_config(experiments.get_config(name), ["data.test_size=10"])
        dataset, model = build_dataset_and_model(config)
        signatures.append(_leaf_signatures(jax.eval_shape(lambda: init_state(config, dataset, model))))
    assert signatures[0] == signatures[1]
