"""History entries shaped like the ones coordinator.federation.loop builds (for store and metrics tests)."""

from __future__ import annotations


def make_entry(
    rnd: int, n_clients: int = 8, epsilon: float | None = None, failed: tuple[int, ...] = ()
) -> dict:
    """A history entry as coordinator.federation.loop builds it: round figures plus one row per client."""
    clients = []
    for i in range(n_clients):
        ok = i not in failed
        clients.append(
            {
                "node": 10**18 + i,  # Flower node ids are unsigned 64-bit
                "status": "ok" if ok else "timeout",
                "reason": "" if ok else "no reply in 60 s",
                "standin_sent": rnd == 1,
                "bytes_down": 13_000_000 if rnd == 1 else 3_500_000,
                "bytes_up": 3_500_000 if ok else 0,
                **(
                    {
                        "num-examples": 48 + i,
                        "train-loss": 2.0 / rnd + 0.01 * i,
                        "train-seconds": 1.5,
                        "peak-mem-mb": 900.0,
                    }
                    if ok
                    else {}
                ),
            }
        )
    entry = {
        "round": rnd,
        "updated": True,
        "wall_s": 10.0 + rnd,
        "train_s": 8.0,
        "query_s": 0.1,
        "plug-in": 40.0 + 5 * rnd,
        "emulator FT": 30.0 + 4 * rnd,
        "train": {"clients": n_clients - len(failed), "num-examples": 400, "train-loss": 2.0 / rnd},
        "client_eval": None,
        "clients": clients,
    }
    if epsilon is not None:
        entry["epsilon"] = epsilon
    return entry
