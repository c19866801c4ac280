"""The training core: train state, optimizer, jitted steps, the loop, checkpoints and run records."""

from jaxarch.train.loop import init_state, train_and_evaluate, validate_config
from jaxarch.train.optim import make_optimizer, make_schedule
from jaxarch.train.state import TrainState, count_params
from jaxarch.train.steps import evaluate, make_eval_step, make_train_step
from jaxarch.train.sweep import sweep  # the function; the module stays importable as jaxarch.train.sweep
from jaxarch.train.tasks import TASKS, Task

__all__ = ["TASKS", "Task", "TrainState", "count_params", "evaluate", "init_state", "make_eval_step",
           "make_optimizer", "make_schedule", "make_train_step", "sweep", "train_and_evaluate",
           "validate_config"]
