"""A hypothesis state machine drives a collection with random upserts, deletes,
filters, searches and reopens, and compares it with a plain-Python model after
every step (Chroma's approach)."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import lamina
from tests.reference import ref_match  # independent of engine/filters.py

DIM = 6
ids = st.one_of(st.integers(0, 40), st.sampled_from(["a", "b", "c", "ü", "long-" + "x" * 50]))
payloads = st.fixed_dictionaries(
    {"g": st.integers(0, 3)}, optional={"tag": st.sampled_from(["x", "y"]), "v": st.floats(-5, 5)}
)
vectors = st.lists(st.floats(-10, 10, width=32).filter(lambda f: abs(f) > 1e-3), min_size=DIM, max_size=DIM)
FILTERS = [
    {"g": 1},
    {"g": {"$in": [0, 2]}},
    {"tag": {"$exists": True}},
    {"$or": [{"tag": "x"}, {"g": {"$gte": 3}}]},
    {"v": {"$lt": 0}},
    {"$not": {"g": 0}},
]
filters = st.sampled_from(FILTERS)


class CollectionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.path = tempfile.mkdtemp(prefix="lamina-sm-")
        self.db = lamina.connect(self.path)
        self.col = self.db.create_collection("sm", dim=DIM, metric="l2")
        self.model: dict[Any, tuple[np.ndarray, dict[str, Any]]] = {}

    @rule(batch=st.lists(st.tuples(ids, vectors, payloads), min_size=1, max_size=8, unique_by=lambda t: t[0]))
    def upsert(self, batch: list[tuple[Any, list[float], dict[str, Any]]]) -> None:
        matrix = np.array([v for _, v, _ in batch], dtype=np.float32)
        assert self.col.upsert([i for i, _, _ in batch], matrix, [p for _, _, p in batch]) == len(batch)
        for (pid, _, pay), vec in zip(batch, matrix, strict=True):
            self.model[pid] = (vec, pay)

    @rule(victims=st.lists(ids, max_size=5))
    def delete_ids(self, victims: list[Any]) -> None:
        expected = len({v for v in victims if v in self.model})
        assert self.col.delete(ids=victims) == expected
        for v in victims:
            self.model.pop(v, None)

    @rule(flt=filters)
    def delete_filter(self, flt: dict[str, Any]) -> None:
        gone = [pid for pid, (_, pay) in self.model.items() if ref_match(flt, pay)]
        assert self.col.delete(filter=flt) == len(gone)
        for pid in gone:
            del self.model[pid]

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = lamina.connect(self.path)
        self.col = self.db.get_collection("sm")

    @precondition(lambda self: bool(self.model))
    @rule(query=vectors, k=st.integers(1, 12), flt=st.one_of(st.none(), filters))
    def search(self, query: list[float], k: int, flt: dict[str, Any] | None) -> None:
        q = np.array(query, dtype=np.float32)
        allowed = [(pid, vec) for pid, (vec, pay) in self.model.items() if flt is None or ref_match(flt, pay)]
        dists = sorted(float(np.sqrt(((vec - q) ** 2).sum())) for _, vec in allowed)[:k]
        hits = self.col.search(q, k=k, filter=flt)
        assert len(hits) == len(dists)
        np.testing.assert_allclose([h.score for h in hits], dists, rtol=1e-3, atol=1e-3)
        for h in hits:
            assert h.payload == self.model[h.id][1]

    @invariant()
    def matches_model(self) -> None:
        assert self.col.count() == len(self.model)
        points, _ = self.col.scroll(limit=1000, with_vector=True)
        assert {p.id: (p.vector.tobytes(), p.payload) for p in points} == {  # type: ignore[union-attr]
            pid: (vec.tobytes(), pay) for pid, (vec, pay) in self.model.items()
        }

    @invariant()
    def filters_match_model(self) -> None:
        """Every filter counts what the model's independent evaluator counts, after every step."""
        for flt in FILTERS:
            expected = sum(ref_match(flt, pay) for _, pay in self.model.values())
            assert self.col.count(flt) == expected, flt

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


CollectionMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCollectionMachine = CollectionMachine.TestCase
