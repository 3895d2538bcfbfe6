"""The build's registry credentials as buildah reads them: a 0600 authfile in a private directory, removed after."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from foundation.adapters.buildah_builder import BuildahBuilder, BuildahConfig
from foundation.ports.builder import BuildFailed, BuildRequest

C1 = "a" * 40
SECRET = "0123456789abcdef" * 2


def builder(tmp_path: Path) -> BuildahBuilder:
    return BuildahBuilder(BuildahConfig("build-1", tmp_path / "repos", tmp_path / "work", "127.0.0.1:5001"))


def test_the_authfile_holds_the_credentials_privately_and_goes_away(tmp_path):
    request = BuildRequest("shop", "shop", C1, f"build$shop@{C1}", SECRET)
    assert SECRET not in repr(request)
    with builder(tmp_path)._authfile(request) as path:
        assert path is not None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        auth = json.loads(path.read_text())["auths"]["127.0.0.1:5001"]["auth"]
        assert base64.b64decode(auth).decode() == f"build$shop@{C1}:{SECRET}"
    assert not path.exists() and not path.parent.exists()
    with pytest.raises(RuntimeError), builder(tmp_path)._authfile(request) as path:
        raise RuntimeError("the push failed")
    assert path is not None and not path.parent.exists()


def test_no_credentials_no_authfile_and_malformed_ones_fail_the_push(tmp_path):
    with builder(tmp_path)._authfile(BuildRequest("shop", "shop", C1)) as path:
        assert path is None
    for user, secret in ((f"build$shop@{C1}", "short"), (f"build$shop@{C1}", SECRET.upper()),
                         ("build$shop@HEAD", SECRET), ("robot$x", SECRET), (f"build$shop@{C1}:x", SECRET),
                         ("", SECRET)):
        request = BuildRequest("shop", "shop", C1, user, secret)
        with pytest.raises(BuildFailed) as failed, builder(tmp_path)._authfile(request):
            pass
        assert failed.value.step == "push" and SECRET not in str(failed.value)
