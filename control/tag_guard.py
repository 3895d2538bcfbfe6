"""Immutable tags: the pure decision of the registry gate on a manifest pushed under a tag.

Distribution 2.8 lets anyone with push rights move a tag to another manifest; LeEngine's
tags are full commit ids, and "this tag is that image, forever" is what deploys rely on.
The gate (``leengine.registry_gate``, a reverse proxy in front of the registry) asks this
module about every request: ``manifest_target`` says whether it is ``PUT
/v2/NAME/manifests/TAG`` with TAG a tag (a reference by digest cannot move anything), then
the gate ``HEAD``\\s the tag upstream with the caller's own ``Authorization`` and
``decide`` says what to do with the PUT:

* the tag does not exist (404): **forward** (the first push of a tag);
* it exists with the same digest as the pushed body (``body_digest``: sha256 of the exact
  bytes, Distribution's digest of a manifest): **forward** (a retry is idempotent);
* it exists with another digest: **refuse**, 403 with Distribution's error body
  ``{"errors": [{"code": "DENIED", ...}]}`` (``denied_body``);
* the registry wants credentials (401): **challenge**: the HEAD's own answer goes back,
  its ``WWW-Authenticate`` untouched, so the client fetches a token and tries again;
* anything else (5xx, an answer without ``Docker-Content-Digest``, the registry away):
  **unavailable** (503): the gate cannot tell, so it does not let the tag move.

The gate serialises the check and the PUT per (NAME, TAG), so two racing pushes of one
tag cannot both see it missing. Deleting a manifest by digest (Master and above) frees
its tags; that is a deliberate act, not a push.

Pure: no I/O; it must not know HTTP libraries, the registry process or tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

# Distribution's grammars (reference/regexp.go): a digest `algorithm:hex`, a tag, a path component.
DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}")
TAG = re.compile(r"[\w][\w.-]{0,127}")
NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
MAX_NAME = 255

#: What the gate accepts in its HEAD: every manifest type, so the registry never converts (and re-digests) one.
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

Action = Literal["forward", "refuse", "challenge", "unavailable"]


@dataclass(frozen=True, slots=True)
class Target:
    """A manifest PUT under a tag: the repository ``name`` and the ``tag``."""

    name: str
    tag: str


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    message: str = ""

    @property
    def status(self) -> int:
        """The HTTP status the gate answers with when it does not forward (0: forward / relay)."""
        return {"refuse": 403, "unavailable": 503}.get(self.action, 0)


def manifest_target(method: str, path: str) -> Target | None:
    """The (name, tag) of ``PUT /v2/NAME/manifests/TAG``; None for any other request (forwarded as it is).

    A reference by digest, or a path that is not a valid name/tag (the registry refuses it itself),
    is None too: nothing the gate must guard.
    """
    if method.upper() != "PUT" or not path.startswith("/v2/"):
        return None
    name, sep, reference = path.removeprefix("/v2/").rpartition("/manifests/")
    if not sep or len(name) > MAX_NAME or not NAME.fullmatch(name) or DIGEST.fullmatch(reference):
        return None
    if not TAG.fullmatch(reference):
        return None
    return Target(name, reference)


def body_digest(body: bytes) -> str:
    """Distribution's digest of a manifest: sha256 of its exact bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def decide(target: Target, head_status: int, existing: str | None, pushed: str) -> Verdict:
    """What to do with a PUT of ``pushed`` (a digest) under ``target``, given the upstream HEAD of the tag."""
    where = f"{target.name}:{target.tag}"
    if head_status == 404:
        return Verdict("forward")
    if head_status == 401:
        return Verdict("challenge")
    if head_status != 200 or not existing or not DIGEST.fullmatch(existing):
        return Verdict("unavailable", f"cannot tell whether tag {where} exists (the registry answered "
                                      f"{head_status}{'' if existing else ' without a digest'}): not moved")
    if existing == pushed:
        return Verdict("forward")
    return Verdict("refuse", f"tag {where} is immutable: it holds {existing}, not {pushed}")


def denied_body(verdict: Verdict) -> bytes:
    """Distribution's error body for a refusal (``DENIED``) or an unverifiable push (``UNAVAILABLE``)."""
    code = "DENIED" if verdict.action == "refuse" else "UNAVAILABLE"
    return json.dumps({"errors": [{"code": code, "message": verdict.message, "detail": None}]}).encode()


__all__ = ["DIGEST", "MANIFEST_TYPES", "Target", "Verdict", "body_digest", "decide", "denied_body",
           "manifest_target"]
