"""Generate the Python + gRPC code of control/protos/**/*.proto into a ``control/generated`` package.

One generator for every way the code gets built:

* the package build (``setup.py``'s ``build_py`` hook): ``pip install .`` or a wheel writes
  the generated package into the build tree, ``pip install -e .`` into the source tree;
* ``scripts/build-protos.sh`` (run by ``scripts/setup.sh`` on every ``./test.sh``/``./run.sh``):
  regenerates the source tree's copy when a proto changed after an editable install.

Protos are compiled with ``-I control/protos``, so a proto's own import path stays
``leengine/control/v1/x.proto`` (what reflection shows); protoc's absolute imports between
generated modules (``from leengine.control.v1 import x_pb2``) are rewritten to
``from control.generated.leengine.control.v1 import x_pb2``, because the top-level name
``leengine`` is taken by our entry points. Every directory gets an ``__init__.py``.

Idempotent: skips when the output was made from the same inputs (the protos, this file,
the grpcio-tools and protobuf versions, recorded in ``.inputs``). The new tree replaces the
old one in one rename, so a reader never sees half a package.

It must not import anything of the project (it runs inside a bare build environment) and
needs only ``grpcio-tools``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

STAMP = ".inputs"
_ABSOLUTE_IMPORT = re.compile(r"^from leengine((?:\.[A-Za-z0-9_]+)*) import ", re.MULTILINE)
HEADER = '"""Generated from control/protos by scripts/protos.py: do not edit, do not commit."""\n'


class ProtoBuildError(RuntimeError):
    """The generated code could not be built; the message says what to do."""


def _protos(source: Path) -> list[str]:
    return sorted(p.relative_to(source).as_posix() for p in source.rglob("*.proto"))


def _inputs(source: Path, protos: list[str]) -> str:
    digest = hashlib.sha256()
    for name in protos:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    digest.update(Path(__file__).read_bytes())
    versions = " ".join(f"{dist} {importlib.metadata.version(dist)}" for dist in ("grpcio-tools", "protobuf"))
    return f"{digest.hexdigest()} {versions}\n"


def generate(source: Path, output: Path) -> bool:
    """Build ``output`` (the ``control/generated`` directory) from the protos under ``source``.

    Returns True when it wrote, False when ``output`` was already up to date.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise ProtoBuildError(f"grpcio-tools is not installed in {sys.executable}'s environment ({exc})") from None
    protos = _protos(source)
    if not protos:
        raise ProtoBuildError(f"no .proto files under {source}")
    inputs = _inputs(source, protos)
    stamp = output / STAMP
    if stamp.is_file() and stamp.read_text() == inputs:
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".generated.", dir=output.parent))
    try:
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto, as the CLI adds it
        status = protoc.main(["grpc_tools.protoc", f"-I{source}", f"-I{include}", f"--python_out={scratch}",
                              f"--pyi_out={scratch}", f"--grpc_python_out={scratch}",
                              *(str(source / name) for name in protos)])
        if status != 0:
            raise ProtoBuildError(f"protoc failed on {source} (exit status {status})")
        for file in sorted([*scratch.rglob("*.py"), *scratch.rglob("*.pyi")]):
            file.write_text(_ABSOLUTE_IMPORT.sub(r"from control.generated.leengine\1 import ", file.read_text()))
        for directory in [scratch, *sorted(p for p in scratch.rglob("*") if p.is_dir())]:
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text(HEADER if directory == scratch else "")
        (scratch / STAMP).write_text(inputs)
        for path in [scratch, *scratch.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        if output.exists():
            shutil.rmtree(output)
        os.rename(scratch, output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=Path, default=root / "control" / "protos")
    parser.add_argument("--output", type=Path, default=root / "control" / "generated")
    args = parser.parse_args(argv)
    try:
        if generate(args.source, args.output):
            print(f"protos: generated {args.output} from {args.source}")
    except (ProtoBuildError, OSError) as exc:
        print(f"protos: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
