"""``lamina ingest PATH --embed``: chunking, payloads, re-ingest, skipped files, resume."""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina.cli import main
from lamina.documents import chunk_file, chunk_sections, sections_of
from lamina.types import EmbeddingConfig
from tests.conftest import ServerThread

GARDEN = """# Garden handbook

Intro paragraph about the garden.

## Roses

Prune roses in late winter, before the buds break.

Feed them in spring.

## Lawn

Mow the lawn every week from May to September.
"""

RST = """=========
Tide book
=========

Tides
-----

Tides follow the moon: two high tides a day.

Storms
------

Storm surges raise the water.
"""

HTML = """<html><head><title>Bread</title><style>p {color: red}</style></head>
<body><h1>Sourdough</h1><p>A starter is fed with flour and water.</p>
<h2>Baking</h2><p>Bake at 250 degrees.</p><script>var x = 1;</script></body></html>"""


def test_sections_follow_headings_of_each_format() -> None:
    title, parts = sections_of(GARDEN, ".md")
    assert title == "Garden handbook"
    assert [h for h, _ in parts] == ["Garden handbook", "Roses", "Lawn"]
    assert parts[1][1] == ["Prune roses in late winter, before the buds break.", "Feed them in spring."]
    title, parts = sections_of(RST, ".rst")
    assert title == "Tide book" and [h for h, _ in parts] == ["Tide book", "Tides", "Storms"]
    title, parts = sections_of(HTML, ".html")
    assert title == "Bread"
    assert parts == [
        ("Sourdough", ["A starter is fed with flour and water."]),
        ("Baking", ["Bake at 250 degrees."]),
    ]
    _, parts = sections_of("# not a heading in plain text\n\nsecond", ".txt")
    assert [h for h, _ in parts] == [""] and len(parts[0][1]) == 2


def test_chunks_respect_size_and_overlap() -> None:
    sentences = [f"Sentence number {i} talks about roses and soil." for i in range(60)]
    paragraphs = [" ".join(sentences[i : i + 3]) for i in range(0, 60, 3)]
    chunks = chunk_sections([("Roses", paragraphs), ("Lawn", ["Mow weekly."])], size=300, overlap=60)
    assert all(len(text) <= 300 for _, text in chunks)
    assert chunks[-1] == ("Lawn", "Mow weekly.")  # sections never share a chunk
    roses = [text for heading, text in chunks if heading == "Roses"]
    joined = " ".join(roses)
    assert all(s in joined for s in sentences)  # nothing is lost
    for before, after in itertools.pairwise(roses):
        head = after.split("\n\n")[0]
        assert before.endswith(head) and 0 < len(head) <= 60  # the overlap repeats the tail
    long = chunk_sections([("", ["word " * 500])], size=200, overlap=0)
    assert len(long) >= 12 and all(len(t) <= 200 for _, t in long)


def _folder(root: Path) -> Path:
    docs = root / "handbook"
    (docs / "sea").mkdir(parents=True)
    (docs / "garden.md").write_text(GARDEN)
    (docs / "sea" / "tides.rst").write_text(RST)
    (docs / "bread.html").write_text(HTML)
    (docs / "notes.txt").write_text("Plain notes about compost.\n\nTurn it monthly.")
    (docs / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (docs / "gone.md").symlink_to(docs / "missing-target.md")  # unreadable
    (docs / ".hidden.md").write_text("# secret")
    return docs


@pytest.mark.parametrize("remote", [False, True], ids=["embedded", "remote"])
def test_ingest_folder_then_reingest_a_changed_file(
    tmp_path: Path, remote: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = _folder(tmp_path)
    srv = ServerThread(tmp_path / "server") if remote else None
    target = srv.address if srv else str(tmp_path / "data")
    argv = ["ingest", str(docs), "--embed", "-c", "kb", "-t", target, "-q", "--chunk-size", "200"]
    argv += ["--chunk-overlap", "40"]
    try:
        assert main(argv) == 0
        err = capsys.readouterr().err
        for skipped in (
            "photo.png: not a text document",
            "latin1.txt: not UTF-8 text",
            "gone.md: unreadable",
        ):
            assert skipped in err
        assert "3 files skipped" in err and "chunks/s" in err and ".hidden" not in err
        with lamina.connect(target) as db:
            col = db.get_collection("kb")
            assert col.config.embedding == EmbeddingConfig("minilm")
            assert col.config.payload_index == {"document": "text", "source": "keyword"}
            points, _ = col.scroll(limit=100)
            by_id = {p.id: p.payload for p in points}
            assert by_id["sea/tides.rst#1"] == {
                "source": "sea/tides.rst",
                "title": "Tide book",
                "section": "Tides",
                "chunk": 1,
                "document": "Tides follow the moon: two high tides a day.",
            }
            assert {p["source"] for p in by_id.values()} == {
                "garden.md",
                "sea/tides.rst",
                "bread.html",
                "notes.txt",
            }
            garden_before = sorted(i for i in by_id if str(i).startswith("garden.md#"))
            assert len(garden_before) == 3
            hit = col.search("when should roses be pruned?", k=1)[0]
            assert hit.payload is not None and hit.payload["section"] == "Roses"
            total = col.count()
        assert main(["collections", "-t", target]) == 0
        assert "embedding: minilm (384 dimensions)" in capsys.readouterr().out
        # the garden file shrinks: its chunks are replaced and the ones past its end removed
        (docs / "garden.md").write_text("# Garden handbook\n\nOnly the lawn now: mow it weekly.\n")
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert "2 stale chunks removed" in err
        assert "ingested 1 chunks from 1 files" in err and "3 unchanged files left as they were" in err
        with lamina.connect(target) as db:
            col = db.get_collection("kb")
            assert col.count() == total - 2
            garden = col.get(garden_before)
            assert [p.id for p in garden] == ["garden.md#0"]
            assert garden[0].payload is not None and "mow it weekly" in garden[0].payload["document"]
            col.add(["mine"], ["a point of the user's own, without a source"])
        # a file disappears: --prune removes its chunks, and only those
        (docs / "notes.txt").unlink()
        assert main([*argv, "--prune"]) == 0
        assert "1 chunks of vanished files pruned" in capsys.readouterr().err
        with lamina.connect(target) as db:
            col = db.get_collection("kb")
            assert col.count() == total - 2 and col.count({"source": "notes.txt"}) == 0
            assert col.get(["mine"]) != []
    finally:
        if srv:
            srv.stop()


def test_ingest_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = _folder(tmp_path)
    data = str(tmp_path / "data")
    with lamina.connect(data) as db:
        db.create_collection("vectors", dim=3)
    for argv, message in [
        (["--embed", "-c", "vectors"], "has no embedding model"),
        (["-c", "kb"], "add --embed"),
        (
            ["--embed", "-c", "kb", "--chunk-size", "100", "--chunk-overlap", "80"],
            "--chunk-overlap must be in",
        ),
        (["--embed", "--model", "nope", "-c", "kb"], "unknown embedding model 'nope'"),
    ]:
        assert main(["ingest", str(docs), "-t", data, "-q", *argv]) == 2
        assert message in capsys.readouterr().err
    with lamina.connect(data) as db:
        assert db.list_collections() == ["vectors"]


class _Flaky(http.server.BaseHTTPRequestHandler):
    """An embeddings endpoint that fails on texts containing FAIL and counts the texts it saw."""

    texts: list[str] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).texts += body["input"]
        if any("FAIL" in t for t in body["input"]):
            self.send_response(503)
            self.end_headers()
            return
        data = [
            {"index": i, "embedding": [len(t), 1.0, t.count("e") + 0.5]} for i, t in enumerate(body["input"])
        ]
        answer = json.dumps({"data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_an_interrupted_ingest_resumes_after_the_files_it_finished(
    tmp_path: Path, flaky: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nThe first file.")
    (docs / "b.md").write_text("# B\n\nThe second file, which will FAIL.")
    (docs / "c.md").write_text("# C\n\nThe third file.")
    data = str(tmp_path / "data")
    with lamina.connect(data) as db:
        db.create_collection("kb", embedding={"model": "m", "url": flaky})
    assert main(["ingest", str(docs), "--embed", "-c", "kb", "-t", data, "-q"]) == 2
    assert re.search(r"error: b\.md: embeddings endpoint .* failed \(503\)", capsys.readouterr().err)
    checkpoint = tmp_path / "docs.kb.checkpoint.json"
    assert list(json.loads(checkpoint.read_text())["files"]) == ["a.md"]
    (docs / "b.md").write_text("# B\n\nThe second file, fixed.")
    _Flaky.texts = []
    assert main(["ingest", str(docs), "--embed", "-c", "kb", "-t", data, "-q", "--resume"]) == 0
    assert not any("first file" in t for t in _Flaky.texts)  # a.md was not embedded again
    assert not checkpoint.exists()
    with lamina.connect(data) as db:
        assert sorted(p.id for p in db.get_collection("kb").scroll(limit=10)[0]) == [
            "a.md#0",
            "b.md#0",
            "c.md#0",
        ]


def test_a_single_file_is_its_own_source(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text(HTML)
    chunks = chunk_file(page, "page.html")
    assert [(c.id, c.title, c.section) for c in chunks] == [
        ("page.html#0", "Bread", "Sourdough"),
        ("page.html#1", "Bread", "Baking"),
    ]
