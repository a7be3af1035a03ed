"""BM25: Lamina's own inverted index beside bm25s on the same corpus, and hybrid fusion.

    python -m bench text [--queries 200]

Corpus: the 60,000 chunk texts of kernel-docs-minilm (base.jsonl), queries: the query
texts (queries.jsonl). Measured: index build time (Lamina: a ``text`` payload index
over points already stored, built by the optimizer from their payloads; bm25s:
``BM25.index`` over the tokenized corpus), text-only query QPS with one query per
call, the overlap of the two engines' top 10 (same formula, different tokenizers),
and Lamina's hybrid query (dense + BM25 fused by RRF) QPS, and recall@10 of its dense
side: the vector ranking it fuses, asked alone (``query(vector=...)``, same search path,
k = 10) and compared with the exact cosine top-10 shipped with the data. bm25s is optional
(``pip install bm25s``); without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

import lamina
from bench.common import Row, plot, save
from bench.tiers import DATA

K = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench text")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    docs = [orjson.loads(line)["text"] for line in (DATA / "base.jsonl").read_bytes().splitlines()]
    queries = [orjson.loads(line)["text"] for line in (DATA / "queries.jsonl").read_bytes().splitlines()]
    queries = queries[: args.queries]
    base = np.load(DATA / "base.f16.npy").astype(np.float32)
    qvecs = np.load(DATA / "queries.f16.npy").astype(np.float32)[: args.queries]
    rows: list[Row] = []
    folder = Path(tempfile.mkdtemp(prefix="lamina-bench-text-"))
    try:
        client = lamina.connect(str(folder))
        col = client.create_collection("t", base.shape[1])
        for lo in range(0, len(docs), 5000):
            ids = list(range(lo, min(lo + 5000, len(docs))))
            col.upsert(ids, base[lo : lo + 5000], [{"body": docs[i]} for i in ids])
        col.optimize()
        started = time.perf_counter()
        col.create_payload_index("body", "text")
        col.optimize()
        build = time.perf_counter() - started
        lam: list[list[int]] = []
        col.query(text=queries[0], k=K, with_payload=False)
        started = time.perf_counter()
        for q in queries:
            lam.append([int(h.id) for h in col.query(text=q, k=K, with_payload=False)])
        qps = len(queries) / (time.perf_counter() - started)
        rows.append(
            Row(
                "lamina bm25",
                "text query",
                qps,
                "QPS",
                note=f"index build {build:.1f} s",
                extra={"build_s": build},
            )
        )
        print(f"lamina: build {build:.1f} s, {qps:.0f} text queries/s", flush=True)
        started = time.perf_counter()
        for q, v in zip(queries, qvecs, strict=True):
            col.query(vector=v, text=q, k=K, with_payload=False)
        hqps = len(queries) / (time.perf_counter() - started)
        truth = np.load(DATA / "gt_cosine_top100.npy")[: len(qvecs), :K]
        dense = [[int(h.id) for h in col.query(vector=v, k=K, with_payload=False)] for v in qvecs]
        recall = float(
            np.mean([len(set(d) & set(t.tolist())) / K for d, t in zip(dense, truth, strict=True)])
        )
        rows.append(
            Row(
                "lamina hybrid rrf",
                "hybrid query",
                hqps,
                "QPS",
                recall=recall,
                note=f"dense side recall@10 {recall:.3f} (vs exact cosine top-10)",
            )
        )
        print(
            f"lamina hybrid (dense + bm25, rrf): {hqps:.0f} queries/s, dense side recall@10 {recall:.3f}",
            flush=True,
        )
        client.close()
        try:
            import bm25s
        except ImportError:
            print("bm25s not installed: its rows are skipped (pip install bm25s)")
        else:
            started = time.perf_counter()
            tokens = bm25s.tokenize(docs, stopwords=None, show_progress=False)
            retriever = bm25s.BM25(k1=1.2, b=0.75)
            retriever.index(tokens, show_progress=False)
            bbuild = time.perf_counter() - started
            found: list[list[int]] = []
            started = time.perf_counter()
            for q in queries:
                qt = bm25s.tokenize([q], stopwords=None, show_progress=False)
                ids, _ = retriever.retrieve(qt, k=K, show_progress=False, n_threads=1)
                found.append([int(i) for i in ids[0]])
            bqps = len(queries) / (time.perf_counter() - started)
            overlap = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(lam, found, strict=True)]))
            rows.append(
                Row(
                    "bm25s",
                    "text query",
                    bqps,
                    "QPS",
                    note=f"index build {bbuild:.1f} s; top-10 overlap with lamina {overlap:.2f}",
                    extra={"build_s": bbuild, "overlap": overlap},
                )
            )
            print(
                f"bm25s: build {bbuild:.1f} s, {bqps:.0f} queries/s, top-10 overlap {overlap:.2f}", flush=True
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = ["| system | task | QPS | ratio vs bm25s | note |", "|---|---|---|---|---|"]
    ref = next((r.rate for r in rows if r.system == "bm25s"), None)
    for r in rows:
        ratio = f"{r.rate / ref:.2f}x" if ref and r.task == "text query" else "-"
        lines.append(f"| {r.system} | {r.task} | {r.rate:,.0f} | {ratio} | {r.note} |")
    markdown = "\n".join(lines)
    print(markdown)
    path = save("text", rows, vars(args), markdown)
    plot("text", rows, ["text query", "hybrid query"])
    print(f"results: {path}")
    return 0
