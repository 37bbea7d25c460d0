"""The federated run's JSON report: the five numbers of docs/architecture.md#evaluation-protocol, bytes per client per round, timings."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

FIVE = ("full zero-shot", "emulator zero-shot", "emulator FT", "plug-in", "full FT (centralised)")


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def bytes_summary(history: list[dict], standin_bytes: int) -> dict:
    """Down/up bytes per client: rounds that carried the stand-in vs rounds that did not, and totals."""
    rows = [(h["round"], c) for h in history for c in h["clients"]]
    with_standin = [c["bytes_down"] for _, c in rows if c["standin_sent"]]
    without = [c["bytes_down"] for _, c in rows if not c["standin_sent"]]
    up = [c["bytes_up"] for _, c in rows if c["bytes_up"]]
    per_round = [
        {
            "round": h["round"],
            "clients": len(h["clients"]),
            "standin_sent": sum(c["standin_sent"] for c in h["clients"]),
            "down_per_client": _mean([c["bytes_down"] for c in h["clients"]]),
            "up_per_client": _mean([c["bytes_up"] for c in h["clients"] if c["bytes_up"]]),
        }
        for h in history
    ]
    return {
        "standin_bytes": standin_bytes,
        "down_per_client_with_standin": _mean(with_standin),
        "down_per_client_without_standin": _mean(without),
        "up_per_client": _mean(up),
        "first_round_down_per_client": per_round[0]["down_per_client"] if per_round else None,
        "later_rounds_down_per_client": _mean(
            [r["down_per_client"] for r in per_round[1:] if r["down_per_client"]]
        ),
        "total_down": sum(c["bytes_down"] for _, c in rows),
        "total_up": sum(c["bytes_up"] for _, c in rows),
        "per_round": per_round,
    }


def build_report(
    config: dict,
    run_dir: Path,
    standin: dict,
    baseline: dict,
    history: list[dict],
    final: dict,
    reference: dict,
) -> dict:
    """Assemble the report dict (see docs/federation.md for the fields)."""
    five = {
        "full zero-shot": baseline["full zero-shot"],
        "emulator zero-shot": baseline["emulator zero-shot"],
        "emulator FT": final["emulator FT"],
        "plug-in": final["plug-in"],
        "full FT (centralised)": reference.get("accuracy"),
    }
    zs, emu_zs = five["full zero-shot"], five["emulator zero-shot"]
    walls = [h["wall_s"] for h in history]
    mems = [c.get("peak-mem-mb", 0.0) for h in history for c in h["clients"] if c["status"] == "ok"]
    return {
        "config": config,
        "run_dir": str(run_dir),
        "standin": standin,
        "five_numbers": five,
        "reference": reference,
        "checks": {
            "cpl_ratio": emu_zs / zs if zs else None,
            "plugin_minus_emulator_ft": five["plug-in"] - five["emulator FT"],
            "plugin_minus_full_zero_shot": five["plug-in"] - zs,
            "success": five["plug-in"] > zs and five["plug-in"] > five["emulator FT"],
        },
        "rounds": history,
        "bytes": bytes_summary(history, standin.get("bytes", 0)),
        "timing": {
            "round_wall_s": walls,
            "round_wall_mean_s": _mean(walls),
            "client_peak_mem_mb_max": max(mems) if mems else None,
        },
        "client_eval": final.get("client_eval"),
        "torch": torch.__version__,
    }


def save_report(report: dict, path: Path) -> Path:
    """Write the report as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def format_summary(report: dict) -> str:
    """A few lines for logs: the five numbers and the byte split."""
    five = report["five_numbers"]
    b = report["bytes"]
    nums = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} -" for k, v in five.items())
    return (
        f"{nums}\nbytes/client: down {b['down_per_client_with_standin'] or 0:,.0f} with stand-in, "
        f"{b['down_per_client_without_standin'] or 0:,.0f} without; up {b['up_per_client'] or 0:,.0f}; "
        f"round wall mean {report['timing']['round_wall_mean_s'] or 0:.1f} s"
    )
