"""What the report's numbers were measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import jax


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, with its family and model numbers where /proc/cpuinfo gives them: virtual machines
    often name only the vendor line ("AMD EPYC"), which covers generations whose matmul speed differs 2-3x."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        return f"{name}, family {fields['cpu family']}, model {fields['model']}"
    return name


def device_description() -> str:
    """E.g. "CPU (AMD EPYC), 2 cores available, JAX 0.4.35" or "1 x NVIDIA H100 (GPU), JAX 0.4.35"."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU ({cpu_model()}), {cores} cores available, JAX {jax.__version__}"
    return f"{jax.device_count()} x {device.device_kind} ({device.platform.upper()}), JAX {jax.__version__}"
