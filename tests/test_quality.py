"""Lint, types and generated code are part of the test command."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_is_clean() -> None:
    result = run("-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    result = run("-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = run("scripts/typecheck.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_proto_code_is_fresh() -> None:
    result = run("scripts/gen_proto.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stale_proto_code_is_detected(tmp_path: object) -> None:
    """The freshness check really compares: a touched generated file fails it."""
    target = ROOT / "proto" / "lamina" / "v1" / "info_pb2.py"
    original = target.read_text()
    try:
        target.write_text(original + "\n# edited by hand\n")
        assert run("scripts/gen_proto.py", "--check").returncode == 1
    finally:
        target.write_text(original)
