"""ResNet-20 on CIFAR-10 (He et al. 2016, section 4.2): basic blocks, 16-32-64 channels, option A shortcuts.

Command: jaxarch run cifar10-resnet20
Wall time: 64,000 steps at batch 128. On the project's 2-core CPU, shared with other jobs (load average 15-19),
the loop trained 0.09-0.61 steps/s on synthetic data of CIFAR's shapes (docs/performance/input-pipeline.md): 1 to
8 days. Not measured on a quiet CPU or on a GPU.
Expected: test accuracy 91.25% (the paper's table 6, ResNet-20: 8.75% error), the published anchor. Not measured
here: the machine these configs were written on cannot download CIFAR-10 (the run downloads
cifar-10-python.tar.gz on first use and checks its SHA-256; jaxarch.data.standard).

The paper's recipe: SGD with momentum 0.9 and weight decay 1e-4 (an L2 penalty), batch 128, learning rate 0.1 for
64k iterations, random crops of the 4-pixel zero-padded image and horizontal flips, per-channel standardisation.
One departure: the learning rate decays along a cosine from 0.1 to 0 instead of dividing by 10 at 32k and 48k
steps (jaxarch's schedules are cosine, linear and constant); the paper's split of 45k/5k only chose the length.
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.data.name = "cifar10"
    config.data.augment = "crop_flip"
    config.model.name = "resnet"
    config.model.depth = 20  # 6n + 2 with n = 3 basic blocks per stage.
    config.optim.optimizer = "sgd_l2"
    config.optim.learning_rate = 0.1
    config.optim.b1 = 0.9  # The momentum.
    config.optim.weight_decay = 1e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0  # The paper clips nothing.
    config.train.steps = 64_000
    config.train.batch_size = 128
    config.train.eval_every = 4000
    config.train.checkpoint_every = 4000
    return config
