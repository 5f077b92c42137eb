"""Which library calls hold Python's GIL long enough to freeze napari from a thread worker.

A thread ticks every 5 ms (as the GUI thread's event loop would) while the main thread
runs, one after another, the imports and calls the map section makes; the largest gap
between ticks is the longest the ticking thread (the viewer) could not run. A call with a
large gap freezes the viewer even in a thread worker, and belongs in a process (the dock's
helper process, ``_widgets/_helper_process.py``). Run it in a fresh process: imports are
measured once.

    python benchmarks/bench_gil.py
"""

from __future__ import annotations

import importlib
import json
import threading
import time

import numpy as np


def main() -> int:
    ticks: list[float] = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.005)

    threading.Thread(target=ticker, daemon=True).start()
    rows = {}

    def step(name, fn):
        ticks.clear()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        gaps = np.diff(ticks) * 1000 if len(ticks) > 1 else np.zeros(1)
        rows[name] = {"seconds": round(seconds, 3), "max_gap_ms": round(float(gaps.max()), 1)}
        print(f"{name:32s} {seconds * 1000:8.0f} ms   longest freeze {gaps.max():6.0f} ms",
              flush=True)

    import torch  # noqa: F401  (the dock has it loaded before any map)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10_000, 256)).astype(np.float32)
    for module in ("scipy.sparse", "sklearn", "sklearn.neighbors", "sklearn.cluster",
                   "numba", "pynndescent", "umap"):
        try:
            step(f"import {module}", lambda m=module: importlib.import_module(m))
        except ImportError as exc:
            rows[f"import {module}"] = f"not run: {exc}"
    from napari_cryossl.analysis.population import cluster, map_2d, suggest

    step("HDBSCAN of 10,000 (first)", lambda: cluster(x))
    step("HDBSCAN of 10,000 (again)", lambda: cluster(x))
    step("PCA map of 10,000", lambda: map_2d(x, method="pca"))
    if isinstance(rows.get("import umap"), dict):
        step("UMAP map of 10,000 (first)", lambda: map_2d(x, method="umap"))
        step("UMAP map of 10,000 (again)", lambda: map_2d(x, method="umap"))
    labels = np.zeros(len(x), np.int64)
    labels[:40] = np.arange(40) % 4 + 1
    step("suggest 20 of 10,000", lambda: suggest(x, labels, 20))
    stop.set()
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
