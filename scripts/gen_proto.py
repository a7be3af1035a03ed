"""Regenerate the Python code for proto/lamina/v1/*.proto (the one way to do it).

    python scripts/gen_proto.py            # write proto/lamina/v1/*_pb2*.py(i)
    python scripts/gen_proto.py --check    # exit 1 if the committed code is stale

The .proto files keep their canonical import paths (``lamina/v1/...``); the generated
imports are rewritten to the installed package ``lamina.proto.lamina.v1``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_DIR = PROTO_ROOT / "lamina" / "v1"
_MODULE_REF = re.compile(r"(?<![\w/.])lamina\.v1\.(\w+_pb2(?:_grpc)?)\b")
_FROM_IMPORT = re.compile(r"^from lamina\.v1 import", re.MULTILINE)


def _rewrite(text: str) -> str:
    text = _FROM_IMPORT.sub("from lamina.proto.lamina.v1 import", text)
    return _MODULE_REF.sub(r"lamina.proto.lamina.v1.\1", text)


def generate() -> dict[str, str]:
    """Run protoc and return {file name: generated text}."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in OUT_DIR.glob("*.proto"))
    # The mypy plugins live beside this interpreter; name them so an unactivated venv works.
    bindir = Path(sys.executable).parent
    plugin_paths = (bindir / f"protoc-gen-{name}" for name in ("mypy", "mypy_grpc"))
    plugins = [f"--plugin={path.name}={path}" for path in plugin_paths if path.exists()]
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            *plugins,
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out = {}
        for path in sorted((Path(tmp) / "lamina" / "v1").iterdir()):
            out[path.name] = _rewrite(path.read_text())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    generated = generate()
    if args.check:
        stale = [
            name
            for name, text in generated.items()
            if not (OUT_DIR / name).exists() or (OUT_DIR / name).read_text() != text
        ]
        if stale:
            print("stale generated proto code: " + ", ".join(stale) + " (run python scripts/gen_proto.py)")
            return 1
        return 0
    for name, text in generated.items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(generated)} files to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
