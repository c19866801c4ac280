"""The defaults every experiment starts from; each experiment changes a few fields."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = ""  # Set from the module name by experiments.get_config.
    config.seed = 0
    # Device mesh, e.g. "data:8" or "data:4,model:2" (see jaxarch.train.mesh); "": every device on `data`.
    config.mesh = ""
    config.data = ml_collections.ConfigDict({"name": "mnist1d"})
    config.model = ml_collections.ConfigDict({"name": "mlp"})
    config.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw",
        learning_rate=1e-3,
        weight_decay=1e-4,
        b1=0.9,
        b2=0.999,
        schedule="cosine",
        warmup_steps=100,
        end_learning_rate_factor=0.0,
        grad_clip_norm=1.0,  # Clip by global norm; 0 turns clipping off.
    ))
    config.train = ml_collections.ConfigDict(dict(
        steps=2000,
        batch_size=128,
        eval_batch_size=500,
        log_every=100,
        eval_every=500,
        checkpoint_every=1000,  # 0: only the final checkpoint.
        keep_checkpoints=2,  # The latest ones; the best by the evaluation metric is kept as well.
        nonfinite="stop",  # A NaN/inf loss or gradient: "stop" the run, or "skip" the update and count it.
        debug_nans=False,  # jax_debug_nans: find the operation that made a NaN (slower; state not donated).
        # The batch as this many micro-batches, their gradients averaged before one update: the memory of one
        # micro-batch (docs/logging.md). batch_size must be a multiple of it times the data axis size.
        grad_accum_steps=1,
        fsdp=False,  # Also split parameters and optimizer state along the data axis (jaxarch.train.sharding).
        # Warm start: a fresh run takes its parameters from the newest checkpoint in this earlier run's work
        # directory (same model and optimizer settings; the data may differ, e.g. a curriculum). "": from the seed.
        init_from="",
        # Batches loaded and placed on the devices ahead of the step by a background thread, at most this many
        # ahead; 0 loads each in the loop (jaxarch.train.prefetch). The batches are the same either way.
        prefetch=2,
    ))
    return config
