"""``lamina ingest PATH --embed``: a file or folder of documents, chunked, embedded, loaded.

Reading: every ``.txt``, ``.md``/``.markdown``, ``.rst`` and ``.html``/``.htm`` file under
PATH (recursively, in path order; hidden files and folders are left out). A file of another
kind, one that cannot be read, or one that is not UTF-8 text is skipped with one line
saying why, and the summary counts the skipped files.

Chunking (``chunk``): a document is cut into sections at its headings (Markdown ``#``
and underlined titles, reStructuredText underlined titles, HTML ``h1``-``h6``), a section
into paragraphs (blank lines; HTML block elements), and paragraphs are packed into
chunks of at most ``size`` characters (default 1,000: about 250 tokens, inside the
built-in model's window of 256). A paragraph longer than ``size`` is cut at sentence
ends, then at spaces. Each chunk after the first of a section starts with the last
``overlap`` characters (default 150, cut at a space) of the one before it, so a
sentence split between two chunks is found from either. Chunks never span sections.

Loading (``load``): each chunk becomes a point with id ``"<source>#<n>"`` and payload
``source`` (the path relative to PATH), ``title`` (the document's first heading, else
its file name), ``section`` (the heading above the chunk), ``chunk`` (n) and ``document``
(the text). Re-ingesting a changed file overwrites its chunks and deletes those past its
new end, so nothing stale is left; a file whose chunks are stored as they are is not
embedded again. Files are written one after the other and a
checkpoint beside PATH records the finished ones: ``--resume`` skips them.
"""

from __future__ import annotations

import argparse
import html.parser
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lamina.errors import FailedPrecondition, InvalidArgument, LaminaError, NotFound
from lamina.ingest import read_checkpoint, write_checkpoint

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".html", ".htm")
DEFAULT_CHUNK_SIZE = 1000
DEFAULT_CHUNK_OVERLAP = 150


@dataclass(frozen=True)
class Chunk:
    """One piece of a document, as it is stored: its text and where it came from."""

    source: str
    title: str
    section: str
    index: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.source}#{self.index}"

    def payload(self) -> dict[str, Any]:
        return {"source": self.source, "title": self.title, "section": self.section, "chunk": self.index}


# ---------------------------------------------------------------- reading
class NotText(Exception):
    """A file that is skipped: unreadable, not UTF-8 text, or of another kind."""


def read_text(path: Path) -> str:
    """The file's text; NotText saying why it cannot be used."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise NotText(
            f"not a text document ({path.suffix or 'no extension'}; reads {', '.join(TEXT_SUFFIXES)})"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NotText(f"unreadable ({exc.strerror})") from None
    if b"\x00" in raw[:8192]:
        raise NotText("binary data, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotText(f"not UTF-8 text (byte {exc.start})") from None


def discover(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (or ``root`` itself), in path order, hidden ones left out."""
    if root.is_file():
        yield root
        return
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


# ---------------------------------------------------------------- sections
#: (heading or "", paragraphs) in document order
Section = tuple[str, list[str]]

_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:_])\1{2,}\s*$")


def _paragraphs(lines: list[str]) -> list[str]:
    text = "\n".join(lines)
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def _plain_sections(text: str, headings: bool) -> list[Section]:
    """Markdown / reStructuredText / plain text: headings (``#`` lines, or a line underlined
    with a repeated punctuation character, optionally overlined) start sections."""
    lines = text.splitlines()
    sections: list[Section] = []
    heading = ""
    body: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        found = None
        if headings and not in_fence:
            md = _MD_HEADING.match(line)
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if md:
                found, skip = md.group(2), 1
            elif line.strip() and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()):
                found, skip = line.strip(), 2
            elif (
                _UNDERLINE.match(line)
                and nxt.strip()
                and i + 2 < len(lines)
                and _UNDERLINE.match(lines[i + 2])
            ):
                found, skip = nxt.strip(), 3  # an overlined title
        if found is not None:
            if body or heading:
                sections.append((heading, _paragraphs(body)))
            heading, body = found, []
            i += skip
            continue
        body.append(line)
        i += 1
    sections.append((heading, _paragraphs(body)))
    return [s for s in sections if s[1] or s[0]]


class _HtmlText(html.parser.HTMLParser):
    """HTML to sections: ``h1``-``h6`` start sections, block elements end paragraphs,
    script and style are left out; ``title`` is the page's <title>."""

    BLOCKS = frozenset(
        [
            "p",
            "div",
            "li",
            "br",
            "tr",
            "pre",
            "section",
            "article",
            "blockquote",
            "dd",
            "dt",
            "table",
            "ul",
            "ol",
            "header",
            "footer",
        ]
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.title = ""
        self._heading = ""
        self._paras: list[str] = []
        self._words: list[str] = []
        self._in: str | None = None  # "h", "title", "skip" while inside such an element

    def _end_paragraph(self) -> None:
        text = " ".join(" ".join(self._words).split())
        if text:
            self._paras.append(text)
        self._words = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._in = "skip"
        elif tag == "title":
            self._in = "title"
        elif re.fullmatch(r"h[1-6]", tag):
            self._end_paragraph()
            if self._paras or self._heading:
                self.sections.append((self._heading, self._paras))
            self._heading, self._paras = "", []
            self._in = "h"
        elif tag in self.BLOCKS:
            self._end_paragraph()

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "title") or re.fullmatch(r"h[1-6]", tag):
            self._in = None
        elif tag in self.BLOCKS:
            self._end_paragraph()

    def handle_data(self, data: str) -> None:
        if self._in == "skip":
            return
        if self._in == "title":
            self.title += data
        elif self._in == "h":
            self._heading = " ".join(f"{self._heading} {data}".split())
        else:
            self._words.append(data)

    def finish(self) -> list[Section]:
        self._end_paragraph()
        self.sections.append((self._heading, self._paras))
        return [s for s in self.sections if s[1] or s[0]]


def sections_of(text: str, suffix: str) -> tuple[str, list[Section]]:
    """(title, sections) of a document of the kind ``suffix`` names."""
    if suffix in (".html", ".htm"):
        parser = _HtmlText()
        parser.feed(text)
        parts = parser.finish()
        title = " ".join(parser.title.split())
    else:
        parts = _plain_sections(text, headings=suffix != ".txt")
        title = ""
    title = title or next((h for h, _ in parts if h), "")
    return title, parts


# ---------------------------------------------------------------- chunks
def _pieces(paragraph: str, size: int) -> list[str]:
    """A paragraph cut into pieces of at most ``size`` characters: at sentence ends when
    possible, else at spaces, else anywhere."""
    if len(paragraph) <= size:
        return [paragraph]
    out: list[str] = []
    rest = paragraph
    while len(rest) > size:
        window = rest[: size + 1]
        cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "))
        cut = cut + 1 if cut >= size // 2 else window.rfind(" ")
        if cut <= 0:
            cut = size
        out.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        out.append(rest)
    return out


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text``, starting at a word."""
    if overlap <= 0 or len(text) <= overlap:
        return text if overlap > 0 else ""
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else tail


def chunk_sections(parts: list[Section], size: int, overlap: int) -> list[tuple[str, str]]:
    """(section heading, chunk text) pairs: paragraphs packed up to ``size`` characters, each
    chunk after a section's first starting with the ``overlap`` tail of the one before."""
    chunks: list[tuple[str, str]] = []
    for heading, paragraphs in parts:
        current = ""
        fresh = True  # current holds only overlap carried over, nothing new yet
        for paragraph in paragraphs:
            for piece in _pieces(paragraph, size - min(overlap, size // 2)):
                joined = f"{current}\n\n{piece}" if current else piece
                if len(joined) <= size:
                    current, fresh = joined, False
                    continue
                if not fresh:
                    chunks.append((heading, current))
                carried = _tail(current, min(overlap, size - len(piece) - 2))
                current, fresh = (f"{carried}\n\n{piece}" if carried else piece), False
        if current and not fresh:
            chunks.append((heading, current))
        elif not paragraphs and heading:
            chunks.append((heading, heading))  # a heading alone still says something
    return chunks


def check_chunking(size: int, overlap: int) -> None:
    if size < 50:
        raise InvalidArgument(f"--chunk-size must be at least 50 characters, got {size}")
    if not 0 <= overlap < size // 2:
        raise InvalidArgument(
            f"--chunk-overlap must be in 0..{size // 2 - 1} (below half the chunk size), got {overlap}"
        )


def chunk_file(
    path: Path, source: str, size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[Chunk]:
    """The chunks of one document file; NotText when it cannot be used."""
    text = read_text(path)
    title, parts = sections_of(text, path.suffix.lower())
    title = title or path.stem
    pairs = chunk_sections(parts, size, overlap)
    return [Chunk(source, title, heading, i, body) for i, (heading, body) in enumerate(pairs)]


# ---------------------------------------------------------------- loading
class FileCheckpoint:
    """The files of a document load that are fully written (by size and modification time),
    in ``<PATH>.<collection>.checkpoint.json`` beside PATH; removed when a run completes."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        default = root.resolve().with_name(f"{root.resolve().name}.{args.collection}.checkpoint.json")
        self.path = Path(args.checkpoint) if args.checkpoint else default
        self.identity = {"root": str(root.resolve()), "target": args.target, "collection": args.collection}
        self.done: dict[str, list[int]] = {}

    def load(self) -> None:
        saved = read_checkpoint(self.path, self.identity)
        if saved is None:
            raise FailedPrecondition(f"no checkpoint {self.path} to resume from; run without --resume")
        self.done = dict(saved.get("files", {}))

    @staticmethod
    def stamp(path: Path) -> list[int]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns]

    def finished(self, source: str, path: Path) -> bool:
        return self.done.get(source) == self.stamp(path)

    def mark(self, source: str, path: Path) -> None:
        self.done[source] = self.stamp(path)
        write_checkpoint(self.path, {**self.identity, "files": self.done})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def target_collection(db: Any, args: argparse.Namespace) -> Any:
    """The collection documents go into: created with ``--model`` when missing; an existing
    one must have a model (and the one ``--model`` names, when given)."""
    model = args.model or "minilm"
    try:
        col = db.get_collection(args.collection)
    except NotFound:
        col = db.create_collection(
            args.collection,
            metric=args.metric,
            embedding=model,
            payload_index={"source": "keyword"},
            multi_tenant=args.tenant is not None,
        )
        print(f"created collection {args.collection!r} (embedding={model}, dim={col.dim})", file=sys.stderr)
        return col
    have = col.config.embedding
    if have is None:
        raise InvalidArgument(
            f"collection {args.collection!r} has no embedding model, so it cannot take documents: "
            f"ingest into a new collection (it is created with --model, default minilm)"
        )
    if args.model and args.model != have.model:
        raise InvalidArgument(
            f"collection {args.collection!r} embeds with {have.model!r}, not {args.model!r}: "
            "leave --model out or use another collection"
        )
    return col


def _stored_as_is(col: Any, chunks: list[Chunk], tenant: str | None) -> bool:
    """Whether the collection already holds exactly these chunks of the file (same texts and
    payloads, none past its end): then re-ingesting it would change nothing."""
    if not chunks:
        return False
    wanted = [*(c.id for c in chunks), f"{chunks[0].source}#{len(chunks)}"]
    stored = {p.id: p.payload for p in col.get(wanted, with_vector=False, tenant=tenant)}
    return len(stored) == len(chunks) and all(
        stored.get(c.id) == {**c.payload(), "document": c.text} for c in chunks
    )


def load(db: Any, args: argparse.Namespace) -> int:
    """Chunk, embed and write every document under ``args.file``; see the module doc."""
    size, overlap = args.chunk_size, args.chunk_overlap
    check_chunking(size, overlap)
    root = Path(args.file)
    if not root.exists():
        raise InvalidArgument(f"{root} does not exist: give a file or a folder of documents")
    checkpoint = FileCheckpoint(root, args)
    if args.resume:
        checkpoint.load()
        print(f"resuming: {len(checkpoint.done)} files already written ({checkpoint.path})", file=sys.stderr)
    files: list[tuple[str, Path, list[Chunk]]] = []
    skipped = 0
    for path in discover(root):
        source = path.name if root.is_file() else path.relative_to(root).as_posix()
        try:
            chunks = chunk_file(path, source, size, overlap)
        except NotText as exc:
            skipped += 1
            print(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        files.append((source, path, chunks))
    col = target_collection(db, args)
    todo = [f for f in files if not checkpoint.finished(f[0], f[1])]
    total = sum(len(c) for _, _, c in todo)
    batch = max(1, args.batch_size or 64)
    began = time.perf_counter()
    written = removed = unchanged = 0
    with tqdm(
        total=total, unit="chunk", desc=f"ingest {root.name}", file=sys.stderr, disable=args.quiet
    ) as bar:
        for source, path, chunks in todo:
            try:
                if _stored_as_is(col, chunks, args.tenant):  # an unchanged file: nothing to embed
                    unchanged += 1
                    bar.update(len(chunks))
                    checkpoint.mark(source, path)
                    continue
                for lo in range(0, len(chunks), batch):
                    part = chunks[lo : lo + batch]
                    written += col.add(
                        [c.id for c in part],
                        [c.text for c in part],
                        [c.payload() for c in part],
                        tenant=args.tenant,
                    )
                    bar.update(len(part))
                # chunks past the file's new end are from an older version of it
                stale = {"source": source, "chunk": {"$gte": len(chunks)}}
                removed += col.delete(filter=stale, tenant=args.tenant)
            except LaminaError as exc:
                print(
                    f"stopped at {source} ({type(exc).__name__}); {len(checkpoint.done)} files are written: "
                    "run again with --resume to continue from there",
                    file=sys.stderr,
                )
                raise type(exc)(f"{source}: {exc}") from None
            checkpoint.mark(source, path)
    pruned = 0
    if getattr(args, "prune", False) and root.is_dir():  # files gone from the folder: their chunks too
        present = sorted({source for source, _, _ in files})
        gone = {"$and": [{"source": {"$exists": True}}, {"source": {"$nin": present}}]}
        pruned = col.delete(filter=gone, tenant=args.tenant)
    checkpoint.remove()
    seconds = time.perf_counter() - began
    rate = written / seconds if seconds > 0 else 0.0
    print(
        f"ingested {written:,} chunks from {len(todo) - unchanged:,} files into {args.collection!r}"
        + (f" ({len(files) - len(todo)} already done)" if len(files) > len(todo) else "")
        + f", {unchanged:,} unchanged files left as they were"
        + f", {removed:,} stale chunks removed"
        + (f", {pruned:,} chunks of vanished files pruned" if getattr(args, "prune", False) else "")
        + f", {skipped:,} files skipped; "
        f"it now holds {col.count(tenant=args.tenant):,} ({seconds:.2f} s, {rate:,.1f} chunks/s)",
        file=sys.stderr,
    )
    return 0


def ingest(
    db: Any,
    path: str | os.PathLike[str],
    collection: str,
    *,
    model: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    resume: bool = False,
    quiet: bool = True,
) -> int:
    """``lamina ingest PATH --embed -c COLLECTION`` from Python, with the client ``db``
    (embedded or remote): returns 0 once every document is chunked, embedded and written."""
    args = argparse.Namespace(
        file=str(path),
        collection=collection,
        target=str(getattr(getattr(db, "_transport", None), "address", "embedded")),
        model=model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        checkpoint=None,
        resume=resume,
        quiet=quiet,
        batch_size=64,
        tenant=None,
        metric="cosine",
    )
    return load(db, args)
