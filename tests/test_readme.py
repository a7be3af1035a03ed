"""Every Python example in README.md runs, and .ci/run uses README's test command."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerThread

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


_DOC_D1 = r"\[Document\(id='d1', metadata=\{'topic': 'storage'\}, page_content='Vectors live on disk in RocksDB\.'\)\]\n"
# what each example must print, in full (a regex over its whole output), keyed by a line
# that only that example holds: an example that prints the wrong thing, or nothing, fails
OUTPUTS = {
    "print(col.count(), col.count(filter": (
        r"((1|doc-3) [-\d.]+ \{'lang': 'en', 'year': 20(21|24)\}\n){2}3 1\n\[1, 'doc-3'\]\n"
    ),
    "except lamina.InvalidArgument": (
        r"\[Hit\(id=10, score=0\.1\d*, payload=\{\}, vector=None\)\]\n"
        r"vectors have dimension 3 but the collection has dimension 4\n\['articles'\] \d+\.\d+\.\d+\S*\n"
    ),
    "await col.count()": r"\[1, 2, 3\] 3\n",
    "info.status.index_bytes": r"1 3000 [1-9]\d*\n",  # three seals merged into one segment
    "plan.segments": r"\[\('exact', 60, '[^']+'\), \('exact', 0, '[^']+'\)\]\n",
    "delete_tenant": r"\[\(1, \{'lang': 'en'\}\)\]\n\[\('acme', 2\), \('globex', 1\)\] 2\n1\n",
    "langchain": _DOC_D1 + r"\['d[12]', 'd[12]'\]\n" + _DOC_D1,  # d2 deleted: d1 alone at the end
    "llama_index": r"\[NodeWithScore\(node=TextNode\([^\n]*'topic': 'storage'[^\n]*node_id='d1'[^\n]*\)\]\n",
    "ld.ingest": r"(?s:.*?)^20000\n20000 7\n(?s:.*)",  # Ray may print its own lines around them
    "list_snapshots": r"(notes-\S+) 2\n\['\1'\]\nnotes-copy 2\n",
    "the server embeds": r"1 Prune roses in late winter\.\n\[1, 2\]\n",
    "from lamina.documents import ingest": (
        r"0\.\d\d  garden\.md / Roses: Prune roses in late winter, before the buds break\.\n"
        r"-?\d\.\d\d  (garden|sea)\.md / [^\n]+\n"
    ),
}


def test_every_readme_example_has_one_expected_output() -> None:
    for block in PYTHON_BLOCKS:
        assert sum(key in block for key in OUTPUTS) == 1, block[:300]
    for key in OUTPUTS:
        assert sum(key in block for block in PYTHON_BLOCKS) == 1, key


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
    (expected,) = [pattern for key, pattern in OUTPUTS.items() if key in block]
    assert re.fullmatch(expected, out, re.MULTILINE), out  # every example prints what it shows


def test_readme_has_two_quick_start_commands() -> None:
    run = re.search(r"<!-- quick-start:run -->\n```bash\n(.+?)\n```", README)
    test = re.search(r"<!-- quick-start:test -->\n```bash\n(.+?)\n```", README)
    assert run and test
    assert "lamina serve" in run.group(1) and "pytest" in test.group(1)
    assert (
        test.group(1) in (ROOT / ".ci" / "run").read_text()
        or "quick-start:test" in (ROOT / ".ci" / "run").read_text()
    )


def _session_blocks() -> list[str]:
    """README's bash blocks other than the two quick-start commands (run by .ci/run itself)."""
    blocks = re.findall(r"(<!-- quick-start:\w+ -->\n)?```bash\n(.*?)```", README, re.DOTALL)
    return [body for marker, body in blocks if not marker]


@pytest.mark.parametrize("block", _session_blocks())
def test_readme_shell_session_runs(block: str, tmp_path: Path) -> None:
    for line in block.strip().splitlines():
        command = line.split("   #")[0].strip()
        if command.startswith("lamina "):
            command = f"{sys.executable} -m {command}"
        elif command.startswith("python "):
            command = f"{sys.executable} {command.removeprefix('python ')}"
        done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr[-2000:])
    assert list(tmp_path.iterdir())  # it did something here


def test_cli_reference_documents_every_command_and_option() -> None:
    from lamina.cli import build_parser

    reference = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    documented: list[str] = [a for action in parser._actions for a in action.option_strings]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert f"`lamina {name}" in reference, name
        documented += [o for a in sub._actions for o in a.option_strings]
    missing = sorted({o for o in documented if f"`{o}" not in reference and o not in ("-h", "--help")})
    assert not missing, f"docs/cli.md does not mention {missing}"
