"""Every Python example in README.md runs, and .ci/run uses README's test command."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerThread

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_readme_python_example_runs(block: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    server = ServerThread(tmp_path / "server-data") if "localhost:6334" in block else None
    try:
        code = block.replace("localhost:6334", server.address) if server else block
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
        if server:
            server.stop()
    out = capsys.readouterr().out
    assert out  # every example prints what it shows
    if "print(col.count(), col.count(filter" in block:
        assert "3 1" in out and "[1, 'doc-3']" in out
    if "except lamina.InvalidArgument" in block:
        assert "vectors have dimension 3 but the collection has dimension 4" in out
        assert "Hit(id=10, score=0.1" in out


def test_readme_has_two_quick_start_commands() -> None:
    run = re.search(r"<!-- quick-start:run -->\n```bash\n(.+?)\n```", README)
    test = re.search(r"<!-- quick-start:test -->\n```bash\n(.+?)\n```", README)
    assert run and test
    assert "lamina serve" in run.group(1) and "pytest" in test.group(1)
    assert (
        test.group(1) in (ROOT / ".ci" / "run").read_text()
        or "quick-start:test" in (ROOT / ".ci" / "run").read_text()
    )
