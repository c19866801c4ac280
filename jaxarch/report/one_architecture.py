"""Claim 8: one architecture serves text and vision.

charlm-gpt (causal Transformer blocks over characters) and digits-vit (Transformer blocks over image patches)
are trained as their experiments define them, with fewer steps, and charlm-gpt's blocks take digits-vit's
width, heads and MLP ratio (the claim is about one block). Each is compared with a model that cannot use
what the Transformer adds: for text, the unigram model (each character's training frequency, no context); for
vision, logistic regression on the raw pixels. Their blocks are compared parameter by parameter.
"""

from __future__ import annotations

import collections

import jax
import numpy as np

from jaxarch.report.context import Context
from jaxarch.report.figures import new_figure, save
from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.runs import seed_values
from jaxarch.report.verdicts import Check, at_least, at_most, per_seed

MIN_STEPS = 100  # fewer training steps than this leave a Transformer too early in training to judge
TEXT_GAIN_MIN, TEXT_GAIN_FAIL = 1.0, 0.0  # bits per character saved over the unigram model
VISION_GAIN_MIN, VISION_GAIN_FAIL = 0.0, -5.0  # accuracy points over logistic regression
SAMPLE_CHARACTERS = 160


def unigram_bits_per_character(train_ids: np.ndarray, validation_ids: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy in bits of the validation text under the training text's character frequencies (add-one
    smoothing, so characters unseen in training cost a finite amount)."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log2(counts / counts.sum())
    return float(-np.mean(log_probs[validation_ids]))


def block_shape_mismatches(first: dict, second: dict) -> int:
    """How many parameter shapes the two blocks do not share (the multisets' symmetric difference)."""
    shapes = lambda block: collections.Counter(np.shape(leaf) for leaf in jax.tree_util.tree_leaves(block))
    a, b = shapes(first), shapes(second)
    return sum(((a - b) + (b - a)).values())


def judge(numbers: dict) -> tuple[Check, ...]:
    """`numbers`: unigram and GPT bits per character, ViT and logistic regression test accuracy (%), the count of
    block parameter shapes the GPT and the ViT do not share, and the fewer training steps of the two;
    `numbers["seeds"]` (over several seeds): gpt_bits, vit_accuracy and logreg_accuracy seed by seed."""
    seeds = numbers.get("seeds", {})
    gpt_bits, vit, logreg = (seeds.get(key, numbers[key]) for key in ("gpt_bits", "vit_accuracy", "logreg_accuracy"))
    return (
        at_least("training steps of the shorter-trained Transformer", numbers["min_steps"], MIN_STEPS,
                 precondition=True),
        at_most("parameter shapes one GPT block and one ViT block do not share", numbers["block_mismatches"], 0),
        at_least("text: unigram bits/char minus the GPT's (what context buys)",
                 per_seed(lambda bits: numbers["unigram_bits"] - bits, gpt_bits), TEXT_GAIN_MIN, TEXT_GAIN_FAIL,
                 unit=" bits"),
        at_least("vision: ViT test accuracy minus logistic regression's",
                 per_seed(lambda a, b: a - b, vit, logreg), VISION_GAIN_MIN, VISION_GAIN_FAIL, unit=" points"),
    )


def _plot(path, numbers: dict) -> None:
    figure = new_figure(8, 3.6)
    text, vision = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    text.bar(["unigram", "GPT"], [numbers["unigram_bits"], numbers["gpt_bits"]], color=["grey", "tab:blue"])
    text.set_ylabel("validation bits per character")
    text.set_title("Text: Python source")
    vision.bar(["logistic regression", "ViT"], [numbers["logreg_accuracy"], numbers["vit_accuracy"]],
               color=["grey", "tab:orange"])
    vision.set_ylabel("test accuracy (%)")
    vision.set_ylim(0, 100)
    vision.set_title("Vision: 8x8 digits")
    save(figure, path)


def vit_block_overrides() -> tuple[str, ...]:
    """Overrides giving a Transformer model digits-vit's block: width, heads and MLP ratio."""
    from jaxarch import experiments
    from jaxarch.models import MODELS

    vit = experiments.get_config("digits-vit").model
    shape = {name: vit.get(name, getattr(MODELS.get("vit"), name)) for name in ("embed_dim", "num_heads", "mlp_ratio")}
    return tuple(f"model.{name}={value}" for name, value in shape.items())


def run(context: Context) -> ClaimResult:
    budget = context.budget
    vision_steps = f"train.steps={budget.vision_steps}"
    gpt = context.runs.train("charlm-gpt", "charlm-gpt", (
        f"train.steps={budget.charlm_steps}", f"train.batch_size={budget.charlm_batch_size}",
        f"sample.num_tokens={SAMPLE_CHARACTERS}", *vit_block_overrides()))
    vit = context.runs.train("digits-vit", "digits-vit", (vision_steps,))
    logreg = context.runs.train("digits-logreg", "mnist1d-logreg", ("data.name=digits", vision_steps))

    text = context.runs.trained("charlm-gpt")
    vision = context.runs.trained("digits-vit")
    gpt_block = text.variables["params"]["decoder"]["layers_0"]
    vit_block = vision.variables["params"]["encoder"]["layers_0"]
    corpus = text.dataset
    numbers = {
        "gpt_bits": gpt["validation_bits_per_token"],
        "unigram_bits": unigram_bits_per_character(corpus.train_ids, corpus.validation_ids, corpus.num_outputs),
        "vit_accuracy": 100 * vit["test_accuracy"],
        "logreg_accuracy": 100 * logreg["test_accuracy"],
        "block_mismatches": block_shape_mismatches(gpt_block, vit_block),
        "min_steps": min(gpt["steps"], vit["steps"]),
        "params": {"gpt": gpt["params"], "vit": vit["params"], "logreg": logreg["params"]},
        "sample": gpt.get("sample", ""),
    }
    if context.runs.seeds > 1:
        numbers["seeds"] = {"gpt_bits": seed_values(gpt, "validation_bits_per_token"),
                            "vit_accuracy": seed_values(vit, "test_accuracy", 100),
                            "logreg_accuracy": seed_values(logreg, "test_accuracy", 100)}
    path, figure = context.figure("one_architecture.png", "The same Transformer blocks on text and on images, each "
                                  "beside a baseline that cannot use context or learned features.")
    _plot(path, numbers)
    block_rows = tuple((name, len(jax.tree_util.tree_leaves(block)),
                        sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(block)))
                       for name, block in (("charlm-gpt decoder block 0", gpt_block),
                                           ("digits-vit encoder block 0", vit_block)))
    return ClaimResult(
        number=8, title="One architecture serves text and vision",
        claim="The same Transformer block, fed characters or image patches, learns a language model and a classifier.",
        method=(f"charlm-gpt ({text.config.model.num_layers} causal blocks) for {budget.charlm_steps} steps of "
                f"{budget.charlm_batch_size} x {corpus.seq_len} characters of Python source; digits-vit "
                f"({vision.config.model.num_layers} blocks over 4x4 patches after a conv stem) and logistic "
                f"regression (mnist1d-logreg with data.name=digits) for {budget.vision_steps} steps on the 8x8 "
                "digits."),
        checks=judge(numbers),
        tables=(Table(("model", "params", "metric", "measured", "baseline", "baseline value"), (
                    ("charlm-gpt", gpt["params"], "validation bits/char", numbers["gpt_bits"], "unigram",
                     numbers["unigram_bits"]),
                    ("digits-vit", vit["params"], "test accuracy %", numbers["vit_accuracy"], "logistic regression",
                     numbers["logreg_accuracy"]))),
                Table(("block", "parameter arrays", "parameters"), block_rows,
                      "One block of each model; the check below compares their parameter shapes one by one.")),
        figures=(figure,),
        numbers=numbers,
        excerpt=numbers["sample"],
        excerpt_caption=(f"A sample from the trained GPT (temperature {text.config.sample.temperature}), prompted "
                         f"with `{text.config.sample.prompt}`:"),
    )
