"""A pod's network namespace made, entered and deleted in-process, without executing ``ip`` or ``nsenter``.

What ``ip netns add NAME`` + ``ip -n NAME link set lo up`` + ``nsenter --net=PATH CMD`` + ``ip netns
delete NAME`` do, done by the lab container runtime itself (lab/container_runtime.py):

* ``make_netns(path)``: an empty file at ``path`` (``O_EXCL``: never an existing one), then, on a
  fresh thread, ``unshare(CLONE_NEWNET)`` (it moves that thread only), a bind mount of the thread's
  ``/proc/thread-self/ns/net`` onto the file (what keeps the namespace alive, as ``ip`` does) and
  loopback up (``SIOCSIFFLAGS`` on a socket made inside). The thread then ends: it never goes
  back into a pool with a foreign namespace.
* ``spawn_in_netns(path, argv, ...)``: on a fresh thread, ``setns`` into the namespace and start
  the process (``subprocess.Popen`` without ``preexec_fn``, so CPython can still use vfork): a
  child inherits the namespaces of the thread that forks it. One exec (the program) instead of
  two (nsenter, then the program), and no fork of the whole runtime in a pre-exec hook.
* ``delete_netns(path)``: ``umount2(MNT_DETACH)`` and unlink, as ``ip netns delete``.

Why: with hundreds of pods each ``ip -n`` unshares a mount namespace, copying the whole mount
table (one bind mount per pod) and remounting ``/sys``, so its cost grew with the pods already
there; and every exec is a fork of a process on a 2-core machine (bench/lab_scale.py).

Invariants: paths are only ever ``<netns dir>/<name>`` built by the caller from checked DNS labels
(never a shell word); ``make_netns`` refuses an existing path and removes what it made when a step
fails; the bind mount needs the netns directory to be a shared mount point (``ip netns add`` makes
it so, and the lab's hosts' namespaces were made with it): ``netns_dir_is_mount`` says whether it
is, and the caller uses ``ip`` otherwise. It must not know pods, CNI or the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class NetnsError(OSError):
    """A step of making, entering or deleting a namespace failed; the message names the step."""


def _check(result: int, step: str, path: Path) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{step} {path}: {os.strerror(err)}")


def netns_dir_is_mount(directory: Path) -> bool:
    """Is ``directory`` a mount point with shared propagation (so a bind mount in it is seen everywhere)?"""
    target = os.path.realpath(directory)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 6 and fields[4] == target and any(o.startswith("shared:") for o in fields[6:]):
                return True
    return False


async def in_fresh_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a new thread that ends with it (its namespaces die with it); awaited without blocking."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]  # fn's result, None only when fn returned None

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="pod-netns", daemon=True).start()
    return await future


def _enter_new_netns(path: Path) -> None:
    """On this (fresh) thread: a new netns, bind-mounted on ``path``, loopback up."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET) for", path)
    own = b"/proc/thread-self/ns/net"
    _check(_libc.mount(own, os.fsencode(path), b"none", MS_BIND, None), "bind mount of the new netns on", path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # made here: it lives in the new netns
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


async def make_netns(path: Path) -> None:
    """A new network namespace kept alive at ``path`` with loopback up (``NetnsError``/``OSError`` on failure)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)  # an existing path: refused
    os.close(fd)
    try:
        await in_fresh_thread(lambda: _enter_new_netns(path))
    except BaseException:
        _unmount_and_unlink(path)
        raise


def _unmount_and_unlink(path: Path) -> None:
    _libc.umount2(os.fsencode(path), MNT_DETACH)  # not mounted (EINVAL) is fine
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def delete_netns(path: Path) -> None:
    """As ``ip netns delete``: the bind mount detached, the file removed (the namespace goes with its last user)."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err != 22:  # EINVAL: not a mount point (a half-made namespace): only the file is left to remove
            raise NetnsError(err, f"umount {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _spawn_inside(path: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), "setns into", path)
    finally:
        os.close(fd)
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


async def spawn_in_netns(path: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``argv`` started inside the namespace at ``path``, in its own session, output discarded."""
    return await in_fresh_thread(lambda: _spawn_inside(path, argv, env))
