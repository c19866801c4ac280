"""What the report's numbers were measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import jax


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description() -> str:
    """E.g. "CPU (AMD EPYC), 2 cores available, JAX 0.4.35" or "1 x NVIDIA H100 (GPU), JAX 0.4.35"."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU ({_cpu_model()}), {cores} cores available, JAX {jax.__version__}"
    return f"{jax.device_count()} x {device.device_kind} ({device.platform.upper()}), JAX {jax.__version__}"
