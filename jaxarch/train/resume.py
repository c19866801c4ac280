"""What a resumed run may change: its config is compared with the config.json the run saved, key by key.

Any difference in a key that can change the trained result is an error unless the caller allows it
(`--allow-config-change`, `train_and_evaluate(..., allow_config_change=True)`); an allowed change is recorded in
`config_history.jsonl` (one line per resume that changed something: the step, the time, each key's saved and
new value) and by a `config_change` record in metrics.jsonl at the resume step, and config.json then holds the
new config. `train.steps` below the checkpoint's step is always an error: those steps have been trained.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from jaxarch.train.records import CONFIG_HISTORY, append_line

# Keys that cannot change the trained state: when records are written and checkpoints kept, how evaluation
# is batched (it only reads the state), debugging switches that recompute the same values, warm-start sources
# (read by a fresh run only), and sampling after training. The layout keys `mesh` and `train.fsdp` are exempt
# too: resuming on another number of devices is what a rescheduled cluster job does, the global batch and
# every value stay the same, and only the order of floating-point sums (the last bits) may change. How far ahead
# batches are prefetched changes when they are loaded, never which. Everything else must match or be allowed.
EXEMPT_ON_RESUME = frozenset({
    "train.log_every", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.eval_batch_size", "train.debug_nans", "train.init_from",
    "sample.prompt", "sample.num_tokens", "sample.temperature",
    "mesh", "train.fsdp", "train.prefetch",
})
ABSENT = "<absent>"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict, live: dict) -> dict[str, tuple]:
    """`key -> (saved value, new value)` for every key outside `EXEMPT_ON_RESUME` whose value differs (a key
    present on one side only has the value `ABSENT` on the other)."""
    before, after = _flat(saved), _flat(live)
    changes = {}
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key, ABSENT), after.get(key, ABSENT)
        if key not in EXEMPT_ON_RESUME and old != new:
            changes[key] = (old, new)
    return changes


def describe(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: saved {old!r}, now {new!r}" for key, (old, new) in changes.items())


# Every message that mentions --restart says what it deletes: the trained run in the work directory.
RESTART_DELETES = "--restart starts over, deleting the checkpoints and records trained there so far"


def check_steps(steps: int, resume_step: int, checkpoint_dir: Path) -> None:
    if steps < resume_step:
        raise ValueError(f"config: train.steps is {steps}, but the checkpoint in {checkpoint_dir} is at step "
                         f"{resume_step}, expected train.steps >= {resume_step} (the steps already trained); "
                         f"choose another --workdir to train a shorter run ({RESTART_DELETES})")


def check_config(changes: dict[str, tuple], *, allowed: bool, workdir: Path) -> None:
    if changes and not allowed:
        raise ValueError(f"config: resuming {workdir} with a config that differs from the saved config.json "
                         f"({describe(changes)}), expected the saved values; pass --allow-config-change "
                         "(allow_config_change=True) to resume with these changes recorded, or choose another "
                         f"--workdir ({RESTART_DELETES})")


def _as_override(key: str, value) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def checkpoint_mismatch(err: Exception, saved: dict | None, live: dict, workdir: Path) -> ValueError:
    """The error for a work directory whose checkpoints hold another train state than this config builds
    (`err`, the checkpoint's description of the difference): the config keys that differ from the saved
    config.json come first, since they are the cause (another text file means another vocabulary, so other
    embedding shapes), with the overrides that reproduce the saved run."""
    changes = config_changes(saved, live) if saved is not None else {}
    if not changes:
        why = ("its config.json matches this config, so the code that builds the model has changed since"
               if saved is not None else "it has no config.json to say which config wrote it")
        return ValueError(f"config: {workdir} holds checkpoints this config cannot read ({why}); {err}")
    restore = " ".join(_as_override(key, old) for key, (old, _) in changes.items() if old != ABSENT)
    advice = f"rerun with {restore} to use that run, or" if restore else ""
    return ValueError(f"config: {workdir} holds a run trained with another config ({describe(changes)}), expected "
                      f"the values of its config.json: {advice} choose another --workdir for this config "
                      f"({RESTART_DELETES}). The checkpoints: {err}")


def record_history(workdir: Path, step: int, changes: dict[str, tuple]) -> None:
    """Appends one line to config_history.jsonl: the step from which the new values apply and each change."""
    entry = {"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "changes": {key: {"saved": old, "new": new} for key, (old, new) in changes.items()}}
    append_line(workdir / CONFIG_HISTORY, json.dumps(entry, default=str))
