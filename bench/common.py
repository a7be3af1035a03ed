"""Shared pieces of the benchmarks: data, timing, a server subprocess, reports."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def clustered(n: int, dim: int, seed: int, clusters: int = 100) -> np.ndarray:
    """Clustered Gaussian vectors, unit length (cosine = dot), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    data = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    return data.astype(np.float32)


def ground_truth(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ data.T.astype(np.float64)
    return np.argsort(-scores, axis=1)[:, :k]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


@dataclass
class Row:
    """One line of a results table."""

    system: str
    task: str
    rate: float  # operations (rows or queries) per second
    unit: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    recall: float | None = None
    rss_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def time_each(fn: Callable[[int], Any], count: int) -> tuple[float, np.ndarray]:
    """Run fn(i) count times; return (ops/s, latencies in ms)."""
    lat = np.empty(count)
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        lat[i] = (time.perf_counter() - t0) * 1000
    return count / (time.perf_counter() - start), lat


def rss_mb(pid: int | None = None, children: bool = False) -> float:
    """Resident memory of process ``pid`` (default: this one), with its descendants' when
    ``children`` (``lamina serve --processes N``: the supervisor and its N processes)."""
    proc = psutil.Process(pid or os.getpid())
    procs = [proc, *proc.children(recursive=True)] if children else [proc]
    total = 0
    for one in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += one.memory_info().rss
    return total / 2**20


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


def table(rows: list[Row], baseline: dict[str, str]) -> str:
    """Markdown table; ``ratio`` is each rate over the baseline system's rate for the same task."""
    base = {r.task: r.rate for r in rows if r.system == baseline.get(r.task)}
    head = (
        "| task | system | rate | ratio vs "
        + "/".join(sorted(set(baseline.values())))
        + " | p50 ms | p99 ms | recall@10 | RSS MB | note |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        ratio = f"{r.rate / base[r.task]:.2f}x" if base.get(r.task) else "-"
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {r.task} | {r.system} | {r.rate:,.0f} {r.unit} | {ratio} | {fmt(r.p50_ms, '.2f')} | "
            f"{fmt(r.p99_ms, '.2f')} | {fmt(r.recall, '.3f')} | {fmt(r.rss_mb, '.0f')} | {r.note} |"
        )
    return "\n".join(lines)


def save(name: str, rows: list[Row], params: dict[str, Any], markdown: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d")
    path = RESULTS / f"{stamp}-{name}.json"
    payload = {"benchmark": name, "params": params, "machine": machine(), "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{stamp}-{name}.md").write_text(markdown + "\n")
    return path


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    return plt


def plot_curves(name: str, rows: list[Row]) -> Path | None:
    """Recall@10 against QPS (log scale), one line per system, to results/<date>-<name>.png."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in sorted(rows, key=lambda r: r.recall or 0.0):
        curves.setdefault(r.system, []).append((r.recall or 0.0, r.rate))
    path = RESULTS / f"{time.strftime('%Y-%m-%d')}-{name}.png"
    return recall_qps_plot(curves, path, "QPS, 1 thread, 1 query per call")


def recall_qps_plot(curves: dict[str, list[tuple[float, float]]], path: Path, ylabel: str) -> Path | None:
    """One line per system through its (recall@10, QPS) points, QPS on a log scale; Lamina solid."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for system, points in curves.items():
        style = "-o" if system.startswith("lamina") else "--s"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=system, markersize=4)
    ax.set_xlabel("recall@10")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot(name: str, rows: list[Row], tasks: list[str]) -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4))
    for ax, task in zip(np.atleast_1d(axes), tasks, strict=True):
        sel = [r for r in rows if r.task == task]
        ax.barh([r.system for r in sel], [r.rate for r in sel], color="#4a7ab5")
        ax.set_title(task)
        ax.set_xlabel(sel[0].unit if sel else "")
        rates = [r.rate for r in sel if r.rate > 0]
        if rates and max(rates) / min(rates) > 20:
            ax.set_xscale("log")
    fig.tight_layout()
    path = RESULTS / f"{time.strftime('%Y-%m-%d')}-{name}.png"
    fig.savefig(path, dpi=90)
    return path
