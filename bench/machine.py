"""What machine and software a benchmark ran on, for its JSON and docs."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib.metadata import version

import psutil


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    keep = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
            "L2 cache", "L3 cache", "Hypervisor vendor")  # fmt: skip
    rows = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in rows if k.strip() in keep}


def machine_info() -> dict:
    """CPU (lscpu), cores, memory, load, GPU and library versions of this machine, right now."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "lscpu": _lscpu(),
        "logical_cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "flwr", "ray")},
    }
