"""Folders of immutable files (a sealed segment) written whole or not at all, and
float32 matrices stored raw so that they can be memory-mapped.

A folder is written under a temporary name, every file and the folder are fsynced,
and then it is renamed into place: a crash leaves either the old state or a
``.tmp`` folder that the next start removes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lamina.storage.faults import classify
from lamina.types import FloatMatrix

TMP_SUFFIX = ".tmp"


def fsync_path(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_tree(src: Path, dest: Path) -> None:
    """Recreate the folder ``src`` at ``dest`` with hard links to its (immutable) files,
    copying where links are not possible (another file system)."""
    dest.mkdir()
    for child in src.iterdir():
        if child.is_dir():
            link_tree(child, dest / child.name)
            continue
        try:
            os.link(child, dest / child.name)
        except OSError:
            shutil.copy2(child, dest / child.name)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path``, and ``path`` itself."""
    for child in path.iterdir():
        if child.is_dir():
            fsync_tree(child)
        else:
            fsync_path(child)
    fsync_path(path)


@contextmanager
def atomic_folder(final: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary folder to fill (``tmp``, default ``<final>.tmp`` beside it); on
    success everything in it is fsynced and it becomes ``final``, durably."""
    tmp = tmp if tmp is not None else final.with_name(final.name + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        fsync_tree(tmp)
        tmp.rename(final)
        fsync_path(final.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        fault = classify(exc, final) if isinstance(exc, Exception) else None
        if fault is None or fault is exc:
            raise
        raise fault from exc


def write_matrix(path: Path, *matrices: FloatMatrix) -> None:
    """Store float32 matrices (of one width) one after another as raw little-endian rows:
    one matrix of all their rows, written in blocks (a memory-mapped part is read as it goes)."""
    with open(path, "wb") as fh:
        for matrix in matrices:
            for lo in range(0, matrix.shape[0], 65_536):
                fh.write(np.ascontiguousarray(matrix[lo : lo + 65_536], dtype="<f4").tobytes())


def map_matrix(path: Path, dim: int) -> FloatMatrix:
    """Memory-map a matrix written by ``write_matrix`` read-only: pages are read from
    disk when touched and belong to the page cache, not to the process heap."""
    size = path.stat().st_size
    if size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    # a plain ndarray view of the map (it keeps the map open): indexing skips memmap's overhead
    return np.asarray(np.memmap(path, dtype="<f4", mode="r", shape=(size // (4 * dim), dim)))
