"""``leengine image-group ...`` and ``leengine robot ...``: image groups and robot accounts of the registry.

    leengine image-group create G [--public]         # you become its Owner; private by default
    leengine image-group show G
    leengine image-group visibility G public|private # Master and above
    leengine image-group delete G                    # Owner: its memberships and robots go too
    leengine robot create NAME --group G | --image G/N --actions pull[,push] [--ttl S]
    leengine robot list
    leengine robot revoke NAME

``robot create`` prints the robot's registry login (``robot$NAME``) and its secret **once**: the
service keeps only a digest. Members of the groups and images: ``leengine app members ...
--kind image_group|image``. Who may do what: docs/roles.md ("Images and the registry").

Options, errors and exit codes are those of ``leengine app`` (leengine/app_cmd.py): ``--control``,
``--token-file``, ``--control-ca``, ``--plaintext``, ``--timeout``, ``--json``, ``--request-id``;
an error is one line ``leengine: error: CODE: details``. It must not know etcd, records or rights.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import typer

from leengine import app_cmd
from leengine.app_cmd import (
    DEFAULT_CONTROL,
    CaOpt,
    ControlOpt,
    JsonOpt,
    PlaintextOpt,
    RequestIdOpt,
    TimeoutOpt,
    TokenFileOpt,
    _print,
    _table,
    _when,
    connect,
    request_id,
)
from leengine.command import BadInput

image_group_app = typer.Typer(no_args_is_help=True,
                              help="Image groups of the registry: create, show, make public/private, delete.")
robot_app = typer.Typer(no_args_is_help=True,
                        help="Robot accounts: registry logins that pull (and push) one group's or one image's images.")

ACTIONS = ("pull", "push")


def _pb() -> Any:
    """The generated messages (``connect`` has already stopped with a readable line when they are missing)."""
    return getattr(app_cmd, "pb")  # noqa: B009 - app_cmd leaves it None when the code is not generated


def render_group(group: Any) -> str:
    role = f"; you are {group.role}" if group.role else ""
    return (f"image group {group.name}: {group.visibility}{role}; last set by {group.by} at {_when(group.at)}")


def render_robot_row(robot: Any) -> list[str]:
    return [robot.name, robot.username, f"{robot.scope.kind} {robot.scope.name}", ",".join(robot.actions),
            _when(robot.expires) if robot.expires else "never", robot.by]


# --------------------------------------------------------------------------- image groups


@image_group_app.command("create")
def create_group(
    name: Annotated[str, typer.Argument(help="the group's name (a DNS label)")],
    public: Annotated[bool, typer.Option("--public", help="anyone may pull its images (default: private)")] = False,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Create an image group (you become its Owner)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = app_cmd.call(connection, "CreateImageGroup", _pb().CreateImageGroupRequest(
        name=name, public=public, request_id=request_id(request)))
    _print(reply, render_group, json_output)


@image_group_app.command("show")
def show_group(
    name: Annotated[str, typer.Argument(help="the group")],
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """An image group: public or private, and your role on it."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = app_cmd.call(connection, "GetImageGroup", _pb().GetImageGroupRequest(name=name))
    _print(reply, render_group, json_output)


@image_group_app.command("visibility")
def set_visibility(
    name: Annotated[str, typer.Argument(help="the group")],
    visibility: Annotated[str, typer.Argument(metavar="public|private", help="who may pull its images")],
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Make a group's images public (anyone pulls) or private (members of role Reporter and above)."""
    if visibility not in ("public", "private"):
        raise BadInput(f"visibility: {visibility[:40]!r} is not public or private")
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = app_cmd.call(connection, "SetImageGroupVisibility", _pb().SetImageGroupVisibilityRequest(
        name=name, visibility=visibility, request_id=request_id(request)))
    _print(reply, render_group, json_output)


@image_group_app.command("delete")
def delete_group(
    name: Annotated[str, typer.Argument(help="the group")],
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Delete a group (Owner): its memberships, its images' memberships and its robots go with it."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = app_cmd.call(connection, "DeleteImageGroup", _pb().DeleteImageGroupRequest(
        name=name, request_id=request_id(request)))
    _print(reply, lambda r: f"image group {name} deleted (revision {r.revision})", json_output)


# --------------------------------------------------------------------------- robots


def _actions(text: str) -> list[str]:
    words = text.split(",")
    if not text or any(w not in ACTIONS for w in words) or len(set(words)) != len(words):
        raise BadInput(f"--actions: {text[:40]!r} is not pull or pull,push")
    return words


@robot_app.command("create")
def create_robot(
    name: Annotated[str, typer.Argument(help="the robot's name (a DNS label); its login is robot$NAME")],
    group: Annotated[str, typer.Option("--group", metavar="G", help="the image group it acts on")] = "",
    image: Annotated[str, typer.Option("--image", metavar="G/N", help="or the one image it acts on")] = "",
    actions: Annotated[str, typer.Option("--actions", metavar="pull[,push]", help="what it may do")] = "pull",
    ttl: Annotated[float, typer.Option("--ttl", metavar="S", help="seconds it lives (default: until revoked)")]
        = 0.0,
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Create a robot (Master of the group or image); prints its secret once."""
    if bool(group) == bool(image):
        raise BadInput("--group or --image: give exactly one")
    if ttl < 0 or not math.isfinite(ttl):
        raise BadInput(f"--ttl: {ttl} is not a number of seconds (0: until revoked)")
    chosen = _actions(actions)
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    scope = _pb().Resource(kind="image_group", name=group) if group else _pb().Resource(kind="image", name=image)
    reply = app_cmd.call(connection, "CreateRobot", _pb().CreateRobotRequest(
        name=name, scope=scope, actions=chosen, ttl_seconds=ttl, request_id=request_id(request)))

    def text(reply: Any) -> str:
        robot = reply.robot
        lifetime = f"until {_when(robot.expires)}" if robot.expires else "until revoked"
        return (f"robot {robot.name}: {','.join(robot.actions)} on {robot.scope.kind} {robot.scope.name}, "
                f"{lifetime}\nregistry login: {robot.username}\nsecret (shown once, keep it now): {reply.secret}")

    _print(reply, text, json_output)


@robot_app.command("list")
def list_robots(
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
) -> None:
    """The robots you manage (Master of their scope; admins: all)."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = app_cmd.call(connection, "ListRobots", _pb().ListRobotsRequest())

    def text(reply: Any) -> str:
        lines = [_table([["ROBOT", "LOGIN", "SCOPE", "ACTIONS", "EXPIRES", "BY"]]
                        + [render_robot_row(r) for r in reply.robots])] if reply.robots else ["no robots"]
        if reply.skipped:
            lines.append(f"{reply.skipped} corrupt robot record(s) skipped (they authenticate nobody)")
        return "\n".join(lines)

    _print(reply, text, json_output)


@robot_app.command("revoke")
def revoke_robot(
    name: Annotated[str, typer.Argument(help="the robot")],
    control: ControlOpt = DEFAULT_CONTROL, token_file: TokenFileOpt = None, control_ca: CaOpt = None,
    plaintext: PlaintextOpt = False, timeout: TimeoutOpt = 10.0, json_output: JsonOpt = False,
    request: RequestIdOpt = "",
) -> None:
    """Revoke a robot: its next token request fails."""
    connection = connect(control, token_file, control_ca, plaintext, timeout)
    reply = app_cmd.call(connection, "RevokeRobot", _pb().RevokeRobotRequest(name=name,
                                                                             request_id=request_id(request)))
    _print(reply, lambda r: f"robot {name} revoked (revision {r.revision})", json_output)
