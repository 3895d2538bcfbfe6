"""The package build's one hook: the gRPC code is generated from control/protos while building.

Everything else about the package is declared in pyproject.toml. ``build_py`` runs for a
wheel (``pip install .``, ``python -m build``) and for an editable install
(``pip install -e .``); the generated ``control/generated`` package goes where that build
reads packages from: the build tree for a wheel, the source tree for an editable install
(where it is gitignored). The generator is scripts/protos.py, shared with
scripts/build-protos.sh.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _generator():
    spec = importlib.util.spec_from_file_location("leengine_protos", ROOT / "scripts" / "protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and friends look their module up by name
    spec.loader.exec_module(module)
    return module


class BuildPyWithProtos(build_py):
    """build_py, then the generated gRPC package into the tree this build installs from."""

    def run(self) -> None:
        super().run()
        protos = _generator()
        target = ROOT if self.editable_mode else Path(self.build_lib)
        protos.generate(ROOT / "control" / "protos", target / "control" / "generated")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        # A wheel records what build_py made; the generated files are made after the copy.
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            generated = Path(self.build_lib) / "control" / "generated"
            outputs += [str(p) for p in generated.rglob("*") if p.is_file()] if generated.exists() else []
        return outputs


setup(cmdclass={"build_py": BuildPyWithProtos})
