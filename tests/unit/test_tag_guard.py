"""The registry gate's pure decision (control.tag_guard): which requests are guarded, what a tagged PUT gets."""

from __future__ import annotations

import hashlib
import json

import pytest

from control.tag_guard import Target, Verdict, body_digest, decide, denied_body, manifest_target

C1 = "a" * 40
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("PUT", f"/v2/shop/shop/manifests/{C1}", Target("shop/shop", C1)),
    ("put", "/v2/web/manifests/latest", Target("web", "latest")),
    ("PUT", "/v2/a/b/c/manifests/v1.2_rc-3", Target("a/b/c", "v1.2_rc-3")),
    ("PUT", f"/v2/shop/shop/manifests/{D1}", None),  # by digest: content-addressed, moves no tag
    ("GET", f"/v2/shop/shop/manifests/{C1}", None),
    ("HEAD", f"/v2/shop/shop/manifests/{C1}", None),
    ("DELETE", f"/v2/shop/shop/manifests/{D1}", None),
    ("PUT", "/v2/shop/shop/blobs/uploads/x", None),
    ("PATCH", "/v2/shop/shop/blobs/uploads/x", None),
    ("PUT", "/v2/Shop/manifests/x", None),  # not a name: the registry refuses it itself
    ("PUT", "/v2/shop/manifests/-bad", None),
    ("PUT", "/v2/shop/manifests/" + "t" * 129, None),
    ("PUT", "/v2/shop/manifests/", None),
    ("PUT", "/v3/shop/manifests/x", None),
    ("PUT", "/v2/manifests/x", None),
])
def test_only_a_manifest_put_under_a_tag_is_guarded(method, path, expected):
    assert manifest_target(method, path) == expected


def test_the_digest_is_sha256_of_the_exact_bytes():
    body = b'{"schemaVersion": 2}'
    assert body_digest(body) == "sha256:" + hashlib.sha256(body).hexdigest()
    assert body_digest(body) != body_digest(body + b"\n")


@pytest.mark.parametrize(("status", "existing", "pushed", "action"), [
    (404, None, D1, "forward"),  # a new tag
    (200, D1, D1, "forward"),  # the same image again: idempotent
    (200, D2, D1, "refuse"),  # another image under an existing tag
    (401, None, D1, "challenge"),  # the caller must authenticate first: its challenge goes back
    (200, None, D1, "unavailable"),  # no digest: cannot tell, the tag does not move
    (200, "garbage", D1, "unavailable"),
    (500, None, D1, "unavailable"),
    (503, D2, D1, "unavailable"),
    (403, None, D1, "unavailable"),
])
def test_the_decision(status, existing, pushed, action):
    verdict = decide(Target("shop/shop", C1), status, existing, pushed)
    assert verdict.action == action
    assert verdict.status == {"refuse": 403, "unavailable": 503}.get(action, 0)


def test_a_refusal_is_distributions_error_body_naming_the_tag():
    verdict = decide(Target("shop/shop", C1), 200, D2, D1)
    body = json.loads(denied_body(verdict))
    [error] = body["errors"]
    assert error["code"] == "DENIED"
    assert f"tag shop/shop:{C1} is immutable" in error["message"] and D2 in error["message"]
    assert json.loads(denied_body(Verdict("unavailable", "x")))["errors"][0]["code"] == "UNAVAILABLE"
