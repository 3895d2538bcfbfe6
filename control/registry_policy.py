"""The one access policy of the image registry: which of the actions a caller asks for it gets.

The registry (Distribution 2.8) trusts the platform's token endpoint; the endpoint, and the
simulator's registry, decide every token's ``access`` with ``granted`` here, so the real and
the simulated registry cannot disagree. A registry repository is an image ``group/name``
(``control.members.Resource("image", ...)``); what a caller may do on it depends on who it is
(``Caller``), the visibility of the image's group and the caller's effective role on the image
(its memberships on the image and on its group, the higher wins: ``control.image_groups``
computes both from etcd).

Rules (docs/roles.md, "Images and the registry"):

* ``pull``: a public group's images -> anyone (anonymous included); a private group's -> Reporter
  and above. ``push``: Developer and above. ``delete``: Master and above.
* An admin gets everything asked, ``registry:catalog:*`` included (nobody else gets the catalog).
* A robot gets its own actions, only on the images of its scope (an image group, or one image);
  a build gets ``pull`` and ``push`` on its task's repository only. Outside their scope, robots and
  builds are treated like anonymous callers: public pulls only.
* Anonymous callers (and the ``discovery`` principal, which the endpoint maps to anonymous) get
  public pulls only. Any visibility other than exactly ``"public"`` counts as private.

Invariants (property-tested): what is granted is always a subset of what the scope asked, in
``ACTIONS`` order, and never more than the caller's kind and role allow.

Scopes follow Distribution's grammar ``repository:NAME:action[,action...]`` (``*`` = all three
actions) and ``registry:catalog:*``; ``parse_scope`` raises ``ScopeError`` naming the bad part
(type, name or action) for anything else. Pure: no I/O; it must not know HTTP, JWT, etcd or gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from control.echo import quoted
from control.members import MembersError, Resource, Role

ACTIONS: tuple[str, ...] = ("pull", "push", "delete")
CATALOG = "catalog"
MAX_SCOPE = 512  # characters of one scope parameter (a repository name is at most 192)

#: The least effective role for each action on a private group's image (a public one's pulls need none).
LEAST_ROLE: dict[str, Role] = {"pull": Role.REPORTER, "push": Role.DEVELOPER, "delete": Role.MASTER}

CallerKind = Literal["anonymous", "user", "admin", "robot", "build"]
CALLER_KINDS: tuple[str, ...] = ("anonymous", "user", "admin", "robot", "build")
ScopeKind = Literal["image_group", "image"]


class ScopeError(ValueError):
    """A scope that is not ``repository:group/name:actions`` or ``registry:catalog:*``; the message names
    the bad part (``type``, ``name`` or ``action``)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"scope {part}: {message}")
        self.part = part


@dataclass(frozen=True, slots=True)
class Scope:
    """One access request: ``type`` "repository" (``name`` an image ``group/name``) or "registry" (``name``
    "catalog", ``actions`` ("*",)); repository actions are distinct members of ACTIONS, in ACTIONS order."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.type == "repository":
            _check_repository(self.name)
            if not self.actions or any(a not in ACTIONS for a in self.actions) \
                    or self.actions != tuple(a for a in ACTIONS if a in self.actions):
                raise ScopeError("action", f"{quoted(self.actions)} is not distinct actions of "
                                           f"{', '.join(ACTIONS)} in that order")
        elif self.type == "registry":
            if self.name != CATALOG:
                raise ScopeError("name", f"registry resource {quoted(self.name)} is not {CATALOG!r}")
            if self.actions != ("*",):
                raise ScopeError("action", f"registry:catalog takes only '*', not {quoted(self.actions)}")
        else:
            raise ScopeError("type", f"{quoted(self.type)} is not 'repository' or 'registry'")

    def __str__(self) -> str:
        """Distribution's text of the scope (``parse_scope(str(s)) == s``)."""
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def _check_repository(name: object) -> str:
    if not isinstance(name, str):
        raise ScopeError("name", f"{quoted(name)} is not a string")
    try:
        Resource("image", name)
    except MembersError:
        raise ScopeError("name", f"{quoted(name)} is not an image group/name (group a DNS label, name "
                                 "[a-z0-9._-], at most 128 characters)") from None
    return name


def parse_scope(text: str) -> Scope:
    """The scope ``text`` asks for (Distribution's ``type:name:actions``); ``ScopeError`` otherwise."""
    if not isinstance(text, str):
        raise ScopeError("type", f"{quoted(text)} is not a string")
    if len(text) > MAX_SCOPE:
        raise ScopeError("name", f"{quoted(text)} is longer than {MAX_SCOPE} characters")
    kind, sep, rest = text.partition(":")
    if not sep:
        raise ScopeError("type", f"{quoted(text)} is not type:name:actions")
    if kind not in ("repository", "registry"):
        raise ScopeError("type", f"{quoted(kind)} is not 'repository' or 'registry'")
    name, sep, listed = rest.rpartition(":")
    if not sep:
        raise ScopeError("action", f"{quoted(text)} names no actions (type:name:actions)")
    words = listed.split(",")
    if kind == "registry":
        if name != CATALOG:
            raise ScopeError("name", f"registry resource {quoted(name)} is not {CATALOG!r}")
        if words != ["*"]:
            raise ScopeError("action", f"registry:catalog takes only '*', not {quoted(listed)}")
        return Scope("registry", CATALOG, ("*",))
    _check_repository(name)
    for word in words:
        if word != "*" and word not in ACTIONS:
            raise ScopeError("action", f"{quoted(word)} is not one of {', '.join(ACTIONS)} or '*'")
    wanted = set(ACTIONS) if "*" in words else set(words)
    return Scope("repository", name, tuple(a for a in ACTIONS if a in wanted))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks for a token. ``name``: the user's, robot's (without ``robot$``) or build task's name;
    ``robot_scope``: for a robot or a build, ("image_group" | "image", name) it may act on, with
    ``robot_actions`` (ignored for other kinds)."""

    kind: CallerKind
    name: str = ""
    robot_scope: tuple[str, str] | None = None
    robot_actions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CALLER_KINDS:
            raise ValueError(f"caller kind {quoted(self.kind)} is not one of {', '.join(CALLER_KINDS)}")
        if not isinstance(self.name, str):
            raise ValueError(f"caller name {quoted(self.name)} is not a string")
        if self.robot_scope is not None and (not isinstance(self.robot_scope, tuple) or len(self.robot_scope) != 2
                                             or not all(isinstance(p, str) for p in self.robot_scope)):
            raise ValueError(f"robot_scope {quoted(self.robot_scope)} is not (kind, name)")
        if not isinstance(self.robot_actions, tuple) or not all(isinstance(a, str) for a in self.robot_actions):
            raise ValueError(f"robot_actions {quoted(self.robot_actions)} is not a tuple of strings")


def in_robot_scope(caller: Caller, repository: str) -> bool:
    """Whether ``repository`` (an image group/name) lies inside the caller's robot scope."""
    if caller.robot_scope is None:
        return False
    kind, name = caller.robot_scope
    if kind == "image_group":
        return repository.partition("/")[0] == name
    return kind == "image" and repository == name


def granted(caller: Caller, scope: Scope, *, visibility: str, role: Role | None) -> tuple[str, ...]:
    """The actions of ``scope`` that ``caller`` may take, in ACTIONS order (``("*",)`` or () for the catalog).

    ``visibility``: the image's group's ("public"; anything else is private); ``role``: the caller's effective
    role on the image (used for ``user`` callers only)."""
    if scope.type != "repository":
        return scope.actions if caller.kind == "admin" and scope.type == "registry" else ()
    if caller.kind == "admin":
        return tuple(a for a in ACTIONS if a in scope.actions)
    allowed: set[str] = {"pull"} if visibility == "public" else set()
    if caller.kind == "user" and role is not None:
        allowed |= {a for a, least in LEAST_ROLE.items() if role >= least}
    elif caller.kind in ("robot", "build") and in_robot_scope(caller, scope.name):
        mine = set(caller.robot_actions) & set(ACTIONS)
        allowed |= mine - {"delete"} if caller.kind == "build" else mine
    return tuple(a for a in ACTIONS if a in scope.actions and a in allowed)


#: The callers of the documented table (docs/roles.md, "Images and the registry"): label, caller, role.
TABLE_CALLERS: tuple[tuple[str, Caller, Role | None], ...] = (
    ("anonymous (no credentials; also discovery)", Caller("anonymous"), None),
    ("user, no member of the image or its group", Caller("user", "someone"), None),
    *((f"user, {role} (of the image or its group)", Caller("user", "someone"), role) for role in Role),
    ("admin", Caller("admin", "ops"), None),
    ("robot (pull,push) inside its scope", Caller("robot", "ci", ("image_group", "grp"), ("pull", "push")), None),
    ("robot outside its scope", Caller("robot", "ci", ("image_group", "other"), ("pull", "push")), None),
    ("build, its task's repository", Caller("build", "grp@c0ffee", ("image", "grp/web"), ("pull", "push")), None),
    ("build, any other repository", Caller("build", "grp@c0ffee", ("image", "grp/api"), ("pull", "push")), None),
)
TABLE_REPOSITORY = "grp/web"


def render_table() -> str:
    """The pull/push/delete table as Markdown, rendered from ``granted``: docs/roles.md holds exactly this."""
    head = ["caller", *(f"{a} ({v})" for v in ("public", "private") for a in ACTIONS)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    everything = Scope("repository", TABLE_REPOSITORY, ACTIONS)
    for label, caller, role in TABLE_CALLERS:
        got = {v: granted(caller, everything, visibility=v, role=role) for v in ("public", "private")}
        rows.append("| " + " | ".join([label, *("✓" if a in got[v] else "–" for v in ("public", "private")
                                                for a in ACTIONS)]) + " |")
    return "\n".join(rows) + "\n"
