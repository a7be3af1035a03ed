"""Filtered search: Lamina's planner beside post-filtering and the plain allow-list plan.

    python -m bench filters [--queries 200] [--tier hnsw|binary] [--n 60000]

Data: kernel-docs-minilm (60,000 x 384, real MiniLM embeddings) with synthetic labels:
a keyword array ``tag`` holding ``p100`` for every point, ``p10`` for 10%, ``p1`` for
1% and ``p01`` for 0.1% (nested, chosen at random), and a uniform numeric ``label`` in
[0, 1) for window filters of width 50%, 5% and 0.5% (a random window per query).
Both fields have payload indexes. For every filter and plan: recall@10 against the
exact filtered ground truth (numpy over all vectors), QPS with one query per call
through the embedded SDK, p50/p99 latency. The unfiltered search is the baseline of
the ratio column; targets: recall@10 >= 0.95 everywhere, QPS at 1% and 0.1% at least
the unfiltered QPS.

Plans: ``auto`` (the planner: exact over the matches when that is cheaper, else the
tier with widened candidates), ``post_filter`` (ef candidates, then the filter) and
``allow_list`` (hnswlib's filtered walk, asking a callback for every visited node).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import lamina
from bench.common import Row, plot, save
from bench.tiers import DATA

K = 10
SELECTIVITY = {"100%": "p100", "10%": "p10", "1%": "p1", "0.1%": "p01"}
WINDOWS = {"window 50%": 0.5, "window 5%": 0.05, "window 0.5%": 0.005}


def labels(n: int, seed: int = 1) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = rng.random(n)
    label = rng.random(n)
    payloads = []
    for i in range(n):
        tags = ["p100"] + [t for t, cut in (("p10", 0.1), ("p1", 0.01), ("p01", 0.001)) if r[i] < cut]
        payloads.append({"tag": tags, "label": float(label[i])})
    return payloads, r, label


def exact_filtered(base: np.ndarray, queries: np.ndarray, masks: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for q, mask in zip(queries, masks, strict=True):
        rows = np.flatnonzero(mask)
        scores = base[rows] @ q
        out.append(rows[np.argsort(-scores, kind="stable")[:K]])
    return out


def run(
    col: Any, queries: np.ndarray, filters: list[dict[str, Any] | None], plan: str
) -> tuple[list[np.ndarray], np.ndarray]:
    found = []
    lat = np.empty(len(queries))
    col.search(queries[0], k=K, filter=filters[0], with_payload=False, plan=plan)  # warm up
    for i, (q, flt) in enumerate(zip(queries, filters, strict=True)):
        t0 = time.perf_counter()
        hits = col.search(q, k=K, filter=flt, with_payload=False, plan=plan)
        lat[i] = (time.perf_counter() - t0) * 1000
        found.append(np.array([h.id for h in hits], dtype=np.int64))
    return found, lat


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(
        np.mean(
            [
                len(set(f.tolist()) & set(t.tolist())) / max(1, min(K, t.size))
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench filters")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--tier", choices=["hnsw", "binary"], default="hnsw")
    args = parser.parse_args(argv)
    base = np.load(DATA / "base.f16.npy").astype(np.float32)[: args.n]
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = np.load(DATA / "queries.f16.npy").astype(np.float32)[: args.queries]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    payloads, r, label = labels(base.shape[0])
    folder = Path(tempfile.mkdtemp(prefix="lamina-bench-filters-"))
    rows: list[Row] = []
    try:
        client = lamina.connect(str(folder))
        index = {"type": "hnsw", "m": 16, "ef_construction": 200, "ef": 64}
        quant = {"type": "binary", "bits": 2} if args.tier == "binary" else None
        if args.tier == "binary":
            index = {"type": "flat"}
        col = client.create_collection(
            "f",
            base.shape[1],
            index=index,
            quantization=quant,
            payload_index={"tag": "keyword", "label": "float"},
        )
        started = time.perf_counter()
        for lo in range(0, base.shape[0], 5000):
            col.upsert(
                list(range(lo, min(lo + 5000, base.shape[0]))), base[lo : lo + 5000], payloads[lo : lo + 5000]
            )
        col.optimize()
        print(
            f"ingest + build of {base.shape[0]:,} points: {time.perf_counter() - started:.1f} s", flush=True
        )

        found, lat = run(col, queries, [None] * len(queries), "auto")
        truth = exact_filtered(base, queries, [np.ones(base.shape[0], np.bool_)] * len(queries))
        unfiltered_qps = len(queries) / (lat.sum() / 1000)
        rows.append(
            Row(
                "unfiltered",
                "no filter",
                unfiltered_qps,
                "QPS",
                float(np.median(lat)),
                float(np.percentile(lat, 99)),
                recall(found, truth),
            )
        )
        print(f"  unfiltered: recall={rows[-1].recall:.3f} qps={unfiltered_qps:.0f}", flush=True)
        rng = np.random.default_rng(4)
        cases: list[tuple[str, list[dict[str, Any]], list[np.ndarray]]] = []
        for name, tag in SELECTIVITY.items():
            cut = {"p100": 1.1, "p10": 0.1, "p1": 0.01, "p01": 0.001}[tag]
            cases.append((name, [{"tag": tag}] * len(queries), [r < cut] * len(queries)))
        for name, width in WINDOWS.items():
            starts = rng.random(len(queries)) * (1 - width)
            flts = [{"label": {"$gte": float(a), "$lt": float(a + width)}} for a in starts]
            cases.append((name, flts, [(label >= a) & (label < a + width) for a in starts]))
        plans = ["auto", "post_filter"] + (["allow_list"] if args.tier == "hnsw" else [])
        for name, flts, masks in cases:
            truth = exact_filtered(base, queries, masks)
            for plan in plans:
                found, lat = run(col, queries, flts, plan)
                qps = len(queries) / (lat.sum() / 1000)
                methods = sorted(
                    {s.method for s in col.explain(queries[0], k=K, filter=flts[0], plan=plan).segments[:-1]}
                )
                row = Row(
                    f"lamina {plan}",
                    name,
                    qps,
                    "QPS",
                    float(np.median(lat)),
                    float(np.percentile(lat, 99)),
                    recall(found, truth),
                    note=", ".join(methods),
                    extra={"vs_unfiltered": qps / unfiltered_qps},
                )
                rows.append(row)
                print(
                    f"  {name:12s} {plan:12s} recall={row.recall:.3f} qps={qps:7.0f} ({qps / unfiltered_qps:.2f}x unfiltered) "
                    f"p50={row.p50_ms:.2f}ms p99={row.p99_ms:.2f}ms plan={row.note}",
                    flush=True,
                )
        client.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        "| filter | plan | recall@10 | QPS | vs unfiltered | p50 ms | p99 ms | segment plan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.task} | {row.system} | {row.recall:.3f} | {row.rate:,.0f} | "
            f"{row.rate / unfiltered_qps:.2f}x | {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.note} |"
        )
    markdown = "\n".join(lines)
    print(markdown)
    name = f"filters-{args.tier}"
    path = save(name, rows, vars(args), markdown)
    plot(name, [r for r in rows if r.system != "unfiltered"], [*SELECTIVITY, *WINDOWS])
    print(f"results: {path}")
    return 0
