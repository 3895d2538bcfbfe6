"""The real Dataplane: veth pairs through netlink (``rtnl.py``, pyroute2), OVS access ports through OVSDB (``ovs`` IDL).

``OvsDataplane(db, timeout)`` implements ``foundation.ports.dataplane.Dataplane`` on one
node. ``attach`` makes a veth pair whose host end is ``host_ifname(container, ifname)``
and whose pod end is created directly inside the pod's network namespace (a path:
``/var/run/netns/X`` or ``/proc/PID/ns/net``) as ``ifname``, sets MTU, address, link
up and the default route, adds the host end to the node's bridge as an access port
(``tag`` = the pool's VLAN) and optionally sends a gratuitous ARP from the pod.
``detach`` removes the port row, marks the host end doomed and leaves deleting the
pair to a background reaper (``_Reaper``): the kernel's part of it is ~14 ms of a
~15 ms DEL otherwise.

The OVS Port row carries these ``external_ids`` so that CHECK, GC and a restarted
agent can find what we made (``ports()`` lists them):

* ``leengine/container-id`` — the container ID given to ``attach``;
* ``leengine/ifname``       — the interface name inside the pod (``eth0``);
* ``leengine/netns``        — the pod's netns path as given to ``attach``.

Invariants (beyond the port's):

* Every blocking call (netlink, OVSDB, setns) runs on this adapter's one worker
  thread, so the event loop is never blocked and no two operations interleave
  (neither pyroute2's sync sockets nor the OVS IDL are thread-safe). A cancelled
  ``await`` does not stop a started operation: it still completes or undoes itself
  on the worker, so a cancellation never leaves half an attachment behind. The one
  exception is the reaper: its own thread with its own host-netns netlink socket,
  sharing nothing with the worker but a locked queue, so an attach never waits
  behind a deletion unless it needs the names being deleted.
* A host-side veth in the device group ``_REAP_GROUP`` is doomed: its port row is
  gone and the reaper deletes it (with its pod end) by one ``RTM_DELLINK`` for the
  whole group. So ``check`` reports a doomed veth missing; ``ports()`` never sees it
  (no row); ``attach`` that finds a name taken (EEXIST) waits for the pending
  deletions, then tries once more; ``close()`` waits for them (at most ``timeout``);
  and a deletion lost in a crash is done by the next round of any reaper.
* The requests of every ``attach`` and ``detach`` (the veth pair, the pod's address
  and route, the doomed mark) are packed by ``foundation/adapters/rtnl.py``: pyroute2
  costs ~0.4 ms of Python per request and ~0.7 ms per socket, ~40x the kernel's work.
  pyroute2 serves what reads the kernel's answers in detail: CHECK, GC, lookups on the
  fallback paths, undo and the reaper.
* Namespaces are entered with ``setns(2)`` on the worker thread only long enough to
  open a socket there; a socket keeps the namespace it was made in. No fork (which
  pyroute2's ``IPRoute(netns=…)`` does) and no subprocess per pod.
* Adding a port bumps ``next_cfg`` and waits until ovs-vswitchd reports it in
  ``cur_cfg`` (what ``ovs-vsctl`` does without ``--no-wait``) and gave the port an
  OpenFlow number: when ``attach`` returns, the port forwards. ``attach`` commits the
  port right after making the veth and configures the pod end while ovsdb-server and
  vswitchd work on it (~1 ms off an ADD). Deleting a port does not wait for vswitchd:
  once the row is gone nothing forwards to the port, and vswitchd drops it on its
  next reconfiguration (at once; the veth's deletion makes it drop regardless).
* On a ``netdev`` (userspace) bridge, TX checksum offload is switched off on the pod
  end: the kernel hands veth frames to vswitchd's packet socket with the TCP/UDP
  checksum still unfilled (CHECKSUM_PARTIAL), vswitchd forwards the bytes as they
  are, and the receiving pod drops them as corrupt. Ping works without this; TCP
  does not.
* A pod's netns path is opened only after ``stat`` says it is a regular file (what
  a namespace file looks like), with ``O_NONBLOCK`` (a FIFO swapped in meanwhile
  cannot block the worker) and ``O_NOCTTY``; the open file must be the one
  stat saw, on nsfs (``fstatfs`` magic ``NSFS_MAGIC``), a *network* namespace
  (``NS_GET_NSTYPE``) and not the agent's own (``/proc/self/ns/net``): anything
  else is ``InvalidNetns``. No ``O_NOFOLLOW``: ``/proc/PID/ns/net`` is itself a
  (magic) symlink the spec allows; what the path resolves to is checked instead.
  ``check_netns`` runs these checks off the worker thread, so even a path on a
  hung filesystem cannot stall the other pods' operations.
* Every failure is a ``DataplaneError`` naming its step; a missing netns is
  ``NetnsNotFound``, an unusable one ``InvalidNetns``. ``attach`` removes only what
  it made itself; if that removal fails, the error's ``undone`` is False.

It must not know about IPAM, pools, etcd or the CNI wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream
from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError

from foundation.adapters.rtnl import Rtnl
from foundation.ports.dataplane import (
    AttachedInterface,
    Attachment,
    DataplaneError,
    InvalidNetns,
    NetnsNotFound,
    PortRecord,
    host_ifname,
)

log = logging.getLogger(__name__)

DEFAULT_DB = "unix:/var/run/openvswitch/db.sock"
EXT_CONTAINER_ID = "leengine/container-id"
EXT_IFNAME = "leengine/ifname"
EXT_NETNS = "leengine/netns"

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_NSFS_MAGIC = 0x6E736673  # statfs f_type of the namespace filesystem (linux/magic.h)
_NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace file (Linux >= 4.11)
_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
_ETHTOOL_STXCSUM = 0x17
_ETH_P_ARP = 0x0806
# The device group (IFLA_GROUP) the reaper puts veths in to delete a batch by one request.
# Only the reaper uses it: a device in it is a veth whose OVS port is gone and that dies next.
_REAP_GROUP = 0x6C65_7270  # "lerp"
_libc = ctypes.CDLL(None, use_errno=True)

# Only the columns we read or write are replicated: the IDL then ignores vswitchd's
# frequent statistics updates to other columns.
_COLUMNS = {
    "Open_vSwitch": ["bridges", "next_cfg", "cur_cfg"],
    "Bridge": ["name", "ports", "datapath_type"],
    "Port": ["name", "interfaces", "tag", "trunks", "external_ids"],
    "Interface": ["name", "type", "options", "ofport", "error"],
}


# --------------------------------------------------------------------------- netns and sockets


class _NetnsLeak(DataplaneError):
    """The worker thread could not return to its own netns: it must not be used again."""


_NOT_FOUND = (FileNotFoundError, ProcessLookupError, NotADirectoryError)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a namespace file"


def _fs_type(fd: int) -> int | None:
    buf = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit Linux; f_type comes first
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return int(struct.unpack_from("l", buf.raw)[0])


def _open_netns(path: str) -> int:
    """An fd of the pod network namespace at ``path``; ``InvalidNetns`` (never a block) for anything else."""
    try:
        seen = os.stat(path)  # before opening: opening a FIFO blocks, opening a device may act on it
    except _NOT_FOUND:
        raise NetnsNotFound(path) from None
    except OSError as exc:
        raise InvalidNetns(path, f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(seen.st_mode):
        raise InvalidNetns(path, f"{path} is not a network namespace: it is {_file_kind(seen.st_mode)}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except _NOT_FOUND:
        raise NetnsNotFound(path) from None
    except OSError as exc:
        raise InvalidNetns(path, f"{path}: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            raise InvalidNetns(path, f"{path} changed while it was being opened")
        if _fs_type(fd) != _NSFS_MAGIC:
            raise InvalidNetns(path, f"{path} is not a network namespace: a regular file, not on nsfs")
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = _CLONE_NEWNET  # an old kernel: setns(CLONE_NEWNET) refuses any other kind later
        if kind != _CLONE_NEWNET:
            raise InvalidNetns(path, f"{path} is a namespace of another kind, not a network namespace")
        own = os.stat("/proc/self/ns/net")
        if (opened.st_dev, opened.st_ino) == (own.st_dev, own.st_ino):
            raise InvalidNetns(path, f"{path} is the node's own network namespace (the agent's), not a pod's")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _probe_netns(path: str) -> None:
    os.close(_open_netns(path))


def _setns(fd: int) -> int:
    return 0 if _libc.setns(fd, _CLONE_NEWNET) == 0 else ctypes.get_errno()


def _socket_in_netns(ns_fd: int, path: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket living in the netns ``ns_fd``, made by this thread's brief visit there.

    setns(2) with CLONE_NEWNET moves only the calling thread; the socket keeps that
    namespace for life, so the thread can go home at once and later work on the
    socket touches the pod's namespace only.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        err = _setns(ns_fd)
        if err:
            if err == errno.EINVAL:  # a file that is not (or no longer) a netns: e.g. a stale bind-mount point
                raise NetnsNotFound(path)
            raise DataplaneError("enter netns", f"{path}: {os.strerror(err)}")
        try:
            return socket.socket(family, type_, proto)
        finally:
            err = _setns(home)
            if err:
                raise _NetnsLeak("enter netns", f"cannot return to the host netns: {os.strerror(err)}")
    finally:
        os.close(home)


def _netns_iproute(ns_fd: int, path: str) -> IPRoute:
    sock = _socket_in_netns(ns_fd, path, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    return IPRoute(fileno=sock.detach())


def _netns_rtnl(ns_fd: int, path: str, timeout: float) -> Rtnl:
    return Rtnl(_socket_in_netns(ns_fd, path, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE), timeout)


def _ethtool_value(sock: socket.socket, ifname: str, cmd: int, value: int = 0) -> int:
    """One ``struct ethtool_value`` ioctl on ``ifname`` in the socket's netns (like ``ethtool -k/-K``)."""
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf)).ljust(40, b"\0")  # sizeof(struct ifreq)
    fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    return int(struct.unpack("II", buf.raw[:8])[1])


def _garp_frame(mac: str, address: ipaddress.IPv4Address) -> bytes:
    """A gratuitous ARP request (sender = target = our address), as ``arping -U`` sends it."""
    hw = bytes.fromhex(mac.replace(":", ""))
    ip = address.packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + ip + b"\xff" * 6 + ip
    return (b"\xff" * 6 + hw + struct.pack("!H", _ETH_P_ARP) + arp).ljust(60, b"\0")


def _nl_missing(exc: NetlinkError) -> bool:
    return exc.code in (errno.ENODEV, errno.ENOENT)


def _link(ipr: IPRoute, ifname: str) -> Any | None:
    """The link called ``ifname`` in the socket's netns, or None: one round trip (RTM_GETLINK by name)."""
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if _nl_missing(exc):
            return None
        raise


def _random_mac() -> str:
    """A random locally administered unicast MAC, as the kernel's ``eth_random_addr`` makes."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return octets.hex(":")


# --------------------------------------------------------------------------- OVSDB


@dataclass(frozen=True)
class _InFlight(Generic[T]):
    """A transaction sent by ``_Ovsdb.begin`` whose outcome ``_Ovsdb.finish`` has not read yet."""

    step: str
    build: Callable[[ovs.db.idl.Transaction], T]
    wait_cfg: bool
    deadline: float
    seqno: int  # Idl.change_seqno before the commit: the baseline to wait on after TRY_AGAIN
    txn: ovs.db.idl.Transaction
    result: T


def _barrier(txn: ovs.db.idl.Transaction) -> None:
    txn.add_op({"op": "comment", "comment": "leengine: sync"})


class _Ovsdb:
    """A blocking OVSDB client on the ``ovs`` IDL; used from the adapter's worker thread only."""

    def __init__(self, remote: str, timeout: float) -> None:
        self.remote = remote
        self.timeout = timeout
        self.idl: ovs.db.idl.Idl | None = None

    # ------------------------------------------------------------ connection

    def _deadline_passed(self, deadline: float, step: str, what: str) -> None:
        if time.monotonic() >= deadline:
            raise DataplaneError(step, f"{what} within {self.timeout:g}s (OVSDB {self.remote})")

    def _block(self, deadline: float, *waiters: Any) -> None:
        poller = ovs.poller.Poller()
        for waiter in waiters:
            waiter.wait(poller)
        poller.timer_wait(max(1, int((deadline - time.monotonic()) * 1000)))
        poller.block()

    def _fetch_schema(self, step: str) -> Any:
        # Ask the server for its schema rather than reading a file: the server's
        # version is the one that matters, and the client needs no OVS install.
        deadline = time.monotonic() + self.timeout
        err, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(self.remote), int(self.timeout * 1000))
        if err:
            raise DataplaneError(step, f"cannot connect to OVSDB {self.remote}: {os.strerror(err)}")
        rpc = ovs.jsonrpc.Connection(stream)
        try:
            request = ovs.jsonrpc.Message.create_request("get_schema", ["Open_vSwitch"])
            err = rpc.send(request)
            while not err:
                err, msg = rpc.recv()
                if err == errno.EAGAIN:
                    self._deadline_passed(deadline, step, "no schema from OVSDB")
                    rpc.run()
                    poller = ovs.poller.Poller()
                    rpc.wait(poller)
                    rpc.recv_wait(poller)
                    poller.timer_wait(max(1, int((deadline - time.monotonic()) * 1000)))
                    poller.block()
                    err = 0
                    continue
                if msg is not None and msg.id == request.id:
                    if msg.type != ovs.jsonrpc.Message.T_REPLY:
                        raise DataplaneError(step, f"OVSDB {self.remote} refused get_schema: {msg.error}")
                    return msg.result
            raise DataplaneError(step, f"OVSDB {self.remote}: {os.strerror(err)}")
        finally:
            rpc.close()

    def _connected(self, step: str) -> ovs.db.idl.Idl:
        if self.idl is None:
            helper = ovs.db.idl.SchemaHelper(schema_json=self._fetch_schema(step))
            for table, columns in _COLUMNS.items():
                helper.register_columns(table, columns)
            # probe_interval=0: the IDL is polled only while an operation runs, so its own
            # keepalive probes would go unanswered between operations and drop the session.
            self.idl = ovs.db.idl.Idl(self.remote, helper, probe_interval=0)
        idl = self.idl
        deadline = time.monotonic() + self.timeout
        while True:
            idl.run()
            if idl.state == idl.IDL_S_MONITORING:
                return idl
            self._deadline_passed(deadline, step, "no OVSDB connection")
            self._block(deadline, idl)

    def close(self) -> None:
        if self.idl is not None:
            self.idl.close()
            self.idl = None

    # ------------------------------------------------------------ transactions

    def transact(self, step: str, build: Callable[[ovs.db.idl.Transaction], T], *, wait_cfg: bool = True) -> T:
        """Build and commit one transaction, retrying on TRY_AGAIN; optionally wait for vswitchd to apply it.

        ``build`` may raise ``DataplaneError`` to give up (nothing is sent then).
        A timeout while the commit is in flight is ambiguous: the server may still
        apply it, as with any remote write.
        """
        return self.finish(self.begin(step, build, wait_cfg=wait_cfg))

    def begin(self, step: str, build: Callable[[ovs.db.idl.Transaction], T], *, wait_cfg: bool = True,
              deadline: float | None = None) -> _InFlight[T]:
        """``transact`` up to sending the commit; ``finish`` does the rest (other work may run in between).

        Several may be in flight (the IDL queues their replies); the server answers them in order.
        """
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        idl = self._connected(step)
        seqno = idl.change_seqno
        txn = ovs.db.idl.Transaction(idl)
        try:
            result = build(txn)
            if wait_cfg:
                self.root(step).increment("next_cfg")
        except BaseException:
            txn.abort()
            raise
        txn.commit()
        return _InFlight(step, build, wait_cfg, deadline, seqno, txn, result)

    def finish(self, inflight: _InFlight[T]) -> T:
        """Wait for the outcome of ``begin``'s commit, rebuilding on TRY_AGAIN, then for vswitchd if asked."""
        while True:
            step, deadline, txn = inflight.step, inflight.deadline, inflight.txn
            idl = self.idl
            assert idl is not None
            status = txn.commit()  # once sent, this only reads the status Idl.run() recorded
            while status == ovs.db.idl.Transaction.INCOMPLETE:
                self._deadline_passed(deadline, step, "OVSDB did not answer the transaction")
                idl.run()
                self._block(deadline, idl, txn)
                status = txn.commit()
            if status == ovs.db.idl.Transaction.SUCCESS:
                if inflight.wait_cfg:
                    self._wait_cfg(step, txn.get_increment_new_value(), deadline)
                return inflight.result
            if status == ovs.db.idl.Transaction.UNCHANGED:
                return inflight.result
            if status != ovs.db.idl.Transaction.TRY_AGAIN:
                detail = txn.get_error() if status == ovs.db.idl.Transaction.ERROR else status
                raise DataplaneError(step, f"OVSDB transaction failed: {detail}")
            # Someone changed what we verified, or the session dropped: wait for news, rebuild.
            while idl.change_seqno == inflight.seqno:
                self._deadline_passed(deadline, step, "OVSDB transaction kept conflicting")
                idl.run()
                self._block(deadline, idl)
            inflight = self.begin(step, inflight.build, wait_cfg=inflight.wait_cfg, deadline=deadline)

    def _wait_cfg(self, step: str, target: int, deadline: float) -> None:
        idl = self.idl
        assert idl is not None
        while True:
            idl.run()
            root = self.root(step)
            if root.cur_cfg >= target:
                return
            if time.monotonic() >= deadline:
                raise DataplaneError(step, f"ovs-vswitchd did not apply the change within {self.timeout:g}s"
                                           f" (is ovs-vswitchd running against {self.remote}?)")
            self._block(deadline, idl)

    def wait_until(self, step: str, done: Callable[[], bool], what: str) -> None:
        """Follow the replica until ``done()`` holds; ``what`` says what did not happen in time."""
        idl = self._connected(step)
        deadline = time.monotonic() + self.timeout
        while True:
            idl.run()
            if done():
                return
            self._deadline_passed(deadline, step, what)
            self._block(deadline, idl)

    def sync(self, step: str) -> ovs.db.idl.Idl:
        """Connect and make the replica at least as new as the server was when we asked.

        A transaction with a lone comment is a round trip on our session; the server
        answers it after every update it queued for us before, so once the answer is
        in, changes other clients committed earlier (an ``ovs-vsctl set``) are visible.
        """
        self.transact(step, _barrier, wait_cfg=False)
        assert self.idl is not None
        return self.idl

    # ------------------------------------------------------------ lookups (replica must be fresh)

    def root(self, step: str) -> Any:
        assert self.idl is not None
        for row in self.idl.tables["Open_vSwitch"].rows.values():
            return row
        raise DataplaneError(step, f"OVSDB {self.remote} has no Open_vSwitch row (run `ovs-vsctl init`)")

    def bridge(self, name: str) -> Any | None:
        assert self.idl is not None
        return next((b for b in self.idl.tables["Bridge"].rows.values() if b.name == name), None)

    def port(self, name: str) -> Any | None:
        assert self.idl is not None
        return next((p for p in self.idl.tables["Port"].rows.values() if p.name == name), None)

    def bridge_of(self, port: Any) -> Any | None:
        assert self.idl is not None
        return next((b for b in self.idl.tables["Bridge"].rows.values() if port in b.ports), None)


# --------------------------------------------------------------------------- the reaper


class _Doomed(threading.Event):
    """One veth handed to the reaper (by its host end's name); set once it is deleted or given up."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.attempts = 0


class _Reaper:
    """Deletes doomed host-side veths in the background: its own thread and its own netlink socket.

    Deleting a net device returns only after an RCU barrier (~14 ms here, most of a DEL);
    the names are unlisted ~1 ms into that call, the rest is the kernel waiting. ``detach``
    marks the host end doomed (device group ``_REAP_GROUP``, one cheap netlink request),
    hands its name over (``submit``) and returns; the pod end goes with it, wherever it is.
    Each round is one ``RTM_DELLINK`` by group: everything marked by then, so deletions
    queued while a round runs are one batch, under one barrier (10 veths: ~20 ms instead
    of ~160 ms one by one). The mark also makes a deletion survive a crash: the next
    round of any reaper in the host netns deletes what is left in the group. "No such
    device" is success (another reaper, or the runtime deleting the pod's netns, was
    first). A failure is logged and retried once in the next round, then logged as an
    error and forgotten: it is never raised into a later, unrelated call.

    The thread is a one-worker executor's: it is made by the adapter's worker thread
    (always back in the host netns between steps), so its socket lives in the host netns;
    at interpreter exit it finishes what is queued. ``_lock`` guards every field but
    ``_ipr``, which only the reaper thread touches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Doomed] = []
        self._pending: set[_Doomed] = set()  # queued or being deleted
        self._running = False
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovs-dataplane-reaper")
        self._ipr: IPRoute | None = None

    # ------------------------------------------------------------ any thread

    def submit(self, name: str) -> None:
        """Delete the host end ``name``, already marked doomed, soon."""
        doomed = _Doomed(name)
        with self._lock:
            self._pending.add(doomed)
            self._queue.append(doomed)
            if not self._running:
                self._running = True
                self._executor.submit(self._run)

    def wait_all(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for every deletion pending now; False if there was none."""
        with self._lock:
            waiting = list(self._pending)
        deadline = time.monotonic() + timeout
        for doomed in waiting:
            doomed.wait(max(0.0, deadline - time.monotonic()))
        return bool(waiting)

    def close(self, timeout: float) -> None:
        """Finish the pending deletions (waiting at most ``timeout`` s), then stop the thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.wait_all(timeout)
        with self._lock:
            left = sorted(d.name for d in self._pending)
        if left:
            log.warning("veth deletion still running after %gs at close: %s", timeout, ", ".join(left))
        self._executor.submit(self._close_socket)  # after the running round, on the reaper thread
        self._executor.shutdown(wait=not left)

    # ------------------------------------------------------------ the reaper thread

    def _close_socket(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _finish(self, batch: list[_Doomed]) -> None:
        with self._lock:
            self._pending.difference_update(batch)
        for doomed in batch:
            doomed.set()

    def _run(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._running = False
                    return
            try:
                if self._ipr is None:
                    self._ipr = IPRoute()
                failed = self._reap(self._ipr, batch)
            except Exception as exc:  # no socket, or a library bug: the round failed (what is not done)
                failed = [(doomed, exc) for doomed in batch if not doomed.is_set()]
            retry: list[_Doomed] = []
            for doomed, error in failed:
                doomed.attempts += 1
                if doomed.attempts < 2:
                    log.warning("deleting veth %s failed (%s); retrying", doomed.name, error)
                    retry.append(doomed)
                else:
                    log.error("deleting veth %s failed again (%s); it is left behind", doomed.name, error)
                    self._finish([doomed])
            with self._lock:
                self._queue[:0] = retry

    @staticmethod
    def _deleted(ipr: IPRoute, **spec: Any) -> None:
        try:
            ipr.link("del", **spec)
        except NetlinkError as exc:
            if not _nl_missing(exc):  # ENODEV: nothing (left) to delete
                raise

    def _reap(self, ipr: IPRoute, batch: list[_Doomed]) -> list[tuple[_Doomed, Exception]]:
        """Delete ``batch`` (and whatever else is doomed); what failed, with why."""
        try:
            self._deleted(ipr, group=_REAP_GROUP)
        except NetlinkError as exc:  # e.g. a foreign device put in our group: one by one, by name
            log.warning("deleting %d veths as one batch failed (%s); deleting them one by one", len(batch), exc)
        else:
            self._finish(batch)
            return []
        failed: list[tuple[_Doomed, Exception]] = []
        for doomed in batch:
            try:
                link = _link(ipr, doomed.name)
                # Only while still marked: a device of that name without the mark is a new one.
                if link is not None and link.get("IFLA_GROUP") == _REAP_GROUP:
                    self._deleted(ipr, index=link["index"])
            except NetlinkError as exc:
                failed.append((doomed, exc))
            else:
                self._finish([doomed])
        return failed


# --------------------------------------------------------------------------- the adapter


class OvsDataplane:
    """The Dataplane port on a real node: pyroute2 for netlink, the OVS IDL for OVSDB.

    ``db`` is the OVSDB endpoint (``unix:/var/run/openvswitch/db.sock``, ``tcp:…``);
    ``timeout`` bounds each wait for OVSDB and ovs-vswitchd, in seconds. Use it as
    ``async with OvsDataplane(db) as dp:`` or call ``close()``.
    """

    def __init__(self, db: str = DEFAULT_DB, timeout: float = 5.0) -> None:
        self.db = db
        self.timeout = timeout
        self._ovsdb = _Ovsdb(db, timeout)
        self._executor = self._new_executor()
        self._host_ipr: IPRoute | None = None
        self._host_ipr_thread: int | None = None
        self._host_rtnl: Rtnl | None = None
        self._reaper = _Reaper()

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _new_executor() -> ThreadPoolExecutor:
        # One worker, not asyncio.to_thread's shared pool: one thread serialises every
        # operation of this adapter (the libraries are not thread-safe) and keeps the
        # host-namespace netlink socket on the thread that made it, as pyroute2 wants.
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovs-dataplane")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except _NetnsLeak:
            # The worker is stuck in a pod's namespace: retire it (it exits after this
            # job) and let the next operation start from a fresh thread in the host netns.
            self._executor.shutdown(wait=False)
            self._executor = self._new_executor()
            self._host_ipr = None
            raise

    def _host(self) -> IPRoute:
        if self._host_ipr is None or self._host_ipr_thread != threading.get_ident():
            self._host_ipr = IPRoute(nlm_echo=True)
            self._host_ipr_thread = threading.get_ident()
        return self._host_ipr

    def _rtnl(self) -> Rtnl:
        """The host netns's socket for the requests of every ADD and DEL (``rtnl.py``: pyroute2 costs ~40x more)."""
        if self._host_rtnl is None:
            # Made by the worker, in the host netns (a retired worker's successor starts there too).
            self._host_rtnl = Rtnl(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE), self.timeout)
        return self._host_rtnl

    async def close(self) -> None:
        def shut() -> None:
            self._ovsdb.close()
            if self._host_ipr is not None:
                self._host_ipr.close()
                self._host_ipr = None
            if self._host_rtnl is not None:
                self._host_rtnl.close()
                self._host_rtnl = None

        with contextlib.suppress(RuntimeError):  # executor already shut down
            await self._call(shut)
        self._executor.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(None, self._reaper.close, self.timeout)

    async def __aenter__(self) -> OvsDataplane:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ the port

    async def check_netns(self, netns: str) -> None:
        # Not on the worker: it needs none of its state, and a path on a hung filesystem
        # would stall every other pod's operation behind it there.
        await asyncio.get_running_loop().run_in_executor(None, _probe_netns, netns)

    async def attach(self, attachment: Attachment) -> AttachedInterface:
        return await self._call(self._attach, attachment)

    async def detach(self, container_id: str, ifname: str, netns: str | None) -> None:
        await self._call(self._detach, container_id, ifname, netns)

    async def check(self, attachment: Attachment) -> list[str]:
        return await self._call(self._check, attachment)

    async def ports(self, bridge: str) -> list[PortRecord]:
        return await self._call(self._ports, bridge)

    # ------------------------------------------------------------ lab helpers (not part of the port)

    async def ensure_bridge(self, name: str, datapath_type: str = "netdev") -> None:
        """Create bridge ``name`` (with its internal port, as ``ovs-vsctl add-br`` does) unless it exists."""
        await self._call(self._ensure_bridge, name, datapath_type)

    async def delete_bridge(self, name: str) -> None:
        """Remove bridge ``name`` and all its ports; nothing to do if it is gone."""
        await self._call(self._delete_bridge, name)

    async def connect_bridges(self, a: str, b: str) -> tuple[str, str]:
        """Join two bridges by a pair of patch ports that trunk every VLAN (no tag, no trunks list).

        Returns the two port names (``patch-A-B`` on A, ``patch-B-A`` on B); idempotent.
        """
        return await self._call(self._connect_bridges, a, b)

    # ------------------------------------------------------------ attach

    def _attach(self, att: Attachment) -> AttachedInterface:
        host = att.host_ifname
        try:
            iface = ipaddress.ip_interface(att.address)
            gateway = ipaddress.ip_address(att.gateway)
        except ValueError as exc:
            raise DataplaneError("parse attachment", str(exc)) from exc
        if not 1 <= att.vlan <= 4094:
            raise DataplaneError("parse attachment", f"VLAN {att.vlan} is outside 1..4094")

        # (Sending this barrier first and reading its answer after the veth exists measured
        # ~0.2 ms slower, not faster: on two CPUs ovsdb-server then competes with the veth.)
        self._ovsdb.sync("connect OVSDB")
        bridge = self._ovsdb.bridge(att.bridge)
        userspace = bridge is not None and bridge.datapath_type == "netdev"
        ns_fd = _open_netns(att.netns)
        undo: list[tuple[str, Callable[[], None]]] = []
        try:
            ns_rtnl = _netns_rtnl(ns_fd, att.netns, self.timeout)  # before any change: proves the netns is real
            try:
                return self._attach_steps(att, host, iface, gateway, userspace, ns_fd, ns_rtnl, undo)
            finally:
                ns_rtnl.close()
        except DataplaneError as exc:
            self._undo(undo, exc)
            raise
        except Exception as exc:  # a bug or an unexpected library error: still all or nothing
            error = DataplaneError("attach", f"unexpected {type(exc).__name__}: {exc}")
            self._undo(undo, error)
            raise error from exc
        finally:
            os.close(ns_fd)

    def _attach_steps(self, att: Attachment, host: str, iface: Any, gateway: Any, userspace: bool,
                      ns_fd: int, ns_rtnl: Rtnl, undo: list[tuple[str, Callable[[], None]]]) -> AttachedInterface:
        # The pod end's MAC is chosen here (as the kernel would: random, locally administered,
        # unicast) so that it need not be read back: one netlink round trip fewer.
        pod_mac = _random_mac()
        with _step("create veth"):
            # The pod end is born in the pod's netns under its final name: moving a device
            # between namespaces afterwards costs an RCU grace period (~20 ms here), this ~1 ms.
            # The host end is born up; the kernel echoes it (NLM_F_ECHO) with its MAC and, as
            # IFLA_LINK, the pod end's ifindex in the pod's netns: no lookups.
            host_mac, index = self._create_veth(att, host, pod_mac, ns_fd)
            undo.append(("delete veth", lambda: self._delete_host_veth(host)))
            if not index:  # no echo (an old kernel): look the ends up
                host_link = _link(self._host(), host)
                with contextlib.closing(_netns_iproute(ns_fd, att.netns)) as ns_ipr:
                    pod_link = _link(ns_ipr, att.ifname)
                if host_link is None or pod_link is None:
                    raise DataplaneError("create veth", f"{host} or {att.ifname} did not appear")
                host_mac, index = host_link.get("IFLA_ADDRESS"), pod_link["index"]

        # Registered before the add: a commit can succeed and the wait for vswitchd after
        # it time out, and then the row is there to remove (only if it carries our ID).
        undo.append(("delete OVS port", lambda: self._delete_port(host, att.container_id)))
        # The port is committed now and awaited last: ovsdb-server and ovs-vswitchd work on it
        # (~2 ms) while we configure the pod end. Nothing reaches the pod through the port
        # before ADD returns that it could mishandle: it has no address until a moment later.
        adding = self._begin_add_port(att, host)

        if userspace:
            with _step("disable TX checksum offload"), _socket_in_netns(ns_fd, att.netns, socket.AF_INET,
                                                                        socket.SOCK_DGRAM) as s:
                _ethtool_value(s, att.ifname, _ETHTOOL_STXCSUM, 0)
        with _step("add address"):
            ns_rtnl.add_address(index, iface)
        with _step("set pod link up"):
            ns_rtnl.set_up(index)
        with _step("add default route"):
            ns_rtnl.add_default_route(gateway, index)

        self._finish_add_port(adding, host)

        if att.gratuitous_arp and iface.version == 4:
            # A raw frame from a packet socket made in the pod's netns, not `arping -U`
            # through nsenter: no fork/exec of a helper per pod (the agent is long-lived
            # and ADD latency counts) and no extra package; ARP is IPv4 only, so an IPv6
            # address gets none (unsolicited neighbour advertisements are not done here).
            with _step("gratuitous ARP"), _socket_in_netns(ns_fd, att.netns, socket.AF_PACKET,
                                                           socket.SOCK_RAW) as raw:
                raw.bind((att.ifname, 0))
                raw.send(_garp_frame(pod_mac, iface.ip))
        return AttachedInterface(
            host_ifname=host,
            host_mac=host_mac or "",
            pod_ifname=att.ifname,
            pod_mac=pod_mac,
            netns=att.netns,
        )

    def _create_veth(self, att: Attachment, host: str, pod_mac: str, ns_fd: int) -> tuple[str | None, int | None]:
        """Create the pair; the host end's MAC and the pod end's ifindex, as echoed (None, None without an echo)."""
        rtnl = self._rtnl()

        def create() -> tuple[str | None, int | None]:
            return rtnl.create_veth(host, att.ifname, mtu=att.mtu, peer_netns_fd=ns_fd, peer_mac=pod_mac)

        try:
            return create()
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        # A name is taken. The kernel does not say which end's; we find out only now, so that
        # the common case costs no lookups. A doomed veth is nobody's: ours being deleted in the
        # background (wait for it), or one a crashed agent left marked (delete it here and now).
        ipr = self._host()
        if self._reaper.wait_all(self.timeout) or self._delete_doomed(ipr):
            with contextlib.suppress(NetlinkError):
                return create()
        if _link(ipr, host) is not None:
            raise DataplaneError("create veth", f"host interface {host} already exists"
                                 f" (is {att.container_id}/{att.ifname} attached already? DEL it first)")
        with contextlib.closing(_netns_iproute(ns_fd, att.netns)) as ns_ipr:
            if _link(ns_ipr, att.ifname) is not None:
                raise DataplaneError("create veth", f"interface {att.ifname} already exists in {att.netns}")
        return create()  # both names are free now: whatever held one is gone

    @staticmethod
    def _delete_doomed(ipr: IPRoute) -> bool:
        """Delete every veth marked doomed in the host netns, synchronously; False if there was none."""
        try:
            ipr.link("del", group=_REAP_GROUP)
        except NetlinkError as exc:
            if _nl_missing(exc):
                return False
            raise
        return True

    def _begin_add_port(self, att: Attachment, host: str) -> _InFlight[None]:
        """Commit the port (an access port tagged ``att.vlan``, our external_ids); ``_finish_add_port`` awaits it."""
        ovsdb = self._ovsdb

        def build(txn: ovs.db.idl.Transaction) -> None:
            bridge = ovsdb.bridge(att.bridge)
            if bridge is None:
                raise DataplaneError("add OVS port", f"bridge {att.bridge} does not exist")
            stale = ovsdb.port(host)
            if stale is not None:
                # Our veth was created a moment ago, so a port of that name is a leftover
                # (OVSDB outlives veths across a node reboot); replace it if it is ours.
                if stale.external_ids.get(EXT_CONTAINER_ID) != att.container_id:
                    raise DataplaneError("add OVS port", f"a port named {host} exists and is not ours")
                owner = ovsdb.bridge_of(stale)
                if owner is not None:
                    owner.delvalue("ports", stale)
            interface = txn.insert(txn.idl.tables["Interface"])
            interface.name = host
            port = txn.insert(txn.idl.tables["Port"])
            port.name = host
            port.interfaces = [interface]
            port.tag = att.vlan
            port.external_ids = {EXT_CONTAINER_ID: att.container_id, EXT_IFNAME: att.ifname, EXT_NETNS: att.netns}
            bridge.addvalue("ports", port)

        return ovsdb.begin("add OVS port", build)

    def _finish_add_port(self, adding: _InFlight[None], host: str) -> None:
        """Wait until ovs-vswitchd applied the port and gave it an OpenFlow port number: then it forwards."""
        ovsdb = self._ovsdb
        ovsdb.finish(adding)

        def interface() -> Any | None:
            port = ovsdb.port(host)
            return port.interfaces[0] if port is not None and port.interfaces else None

        def settled() -> bool:
            # vswitchd writes ofport (or error) in its status updates; do not assume they
            # land in the same commit as cur_cfg.
            row = interface()
            return row is None or bool(row.error) or row.ofport not in ([], [0])

        ovsdb.wait_until("add OVS port", settled, f"ovs-vswitchd gave {host} no OpenFlow port")
        row = interface()
        if row is None:
            raise DataplaneError("add OVS port", f"port {host} vanished right after it was added")
        if row.error or row.ofport == [-1]:
            # vswitchd took the row but could not open the device: the port would never forward.
            raise DataplaneError("add OVS port", f"ovs-vswitchd could not add {host}: "
                                                 f"{''.join(row.error) or 'no OpenFlow port number'}")

    def _undo(self, undo: list[tuple[str, Callable[[], None]]], exc: DataplaneError) -> None:
        for what, action in reversed(undo):
            try:
                action()
            except Exception as undo_exc:  # report, keep undoing the rest
                log.error("attach undo: %s failed: %s", what, undo_exc)
                exc.add_note(f"undo: {what} failed: {undo_exc}")
                exc.undone = False

    # ------------------------------------------------------------ detach

    def _detach(self, container_id: str, ifname: str, netns: str | None) -> None:
        host = host_ifname(container_id, ifname)
        self._delete_port(host, container_id)  # first: once the row is gone, nothing forwards to the port
        marked = False
        with _step("delete veth", missing_ok=True):
            # Deleting the pair takes ~14 ms of kernel time (an RCU barrier), none of which this
            # call needs to wait for: mark the host end doomed and let the reaper delete it (the
            # pod end goes with it) in the background.
            self._rtnl().set_group(host, _REAP_GROUP)
            marked = True
        if marked:
            self._reaper.submit(host)
            return
        if netns is not None:
            self._delete_pod_end(netns, ifname)  # no host end: a lone veth in the pod, if anything

    def _delete_port(self, host: str, container_id: str) -> None:
        """Remove port ``host`` if it is there and carries ``container_id``: never someone else's."""
        ovsdb = self._ovsdb
        ovsdb.sync("delete OVS port")

        def build(txn: ovs.db.idl.Transaction) -> bool:
            port = ovsdb.port(host)
            if port is None or port.external_ids.get(EXT_CONTAINER_ID) != container_id:
                return False
            owner = ovsdb.bridge_of(port)
            if owner is not None:
                owner.delvalue("ports", port)  # Port and Interface rows are garbage-collected with it
            else:
                port.delete()
            return True

        # No wait for ovs-vswitchd here (unlike adds): the row is gone from OVSDB, so nothing
        # will forward to the port again, and waiting cost ~12 ms of every DEL (33 -> 20 ms).
        # vswitchd drops the interface when it next reconfigures, vanished device or not.
        ovsdb.transact("delete OVS port", build, wait_cfg=False)

    def _delete_pod_end(self, netns: str, ifname: str) -> None:
        try:
            ns_fd = _open_netns(netns)
        except InvalidNetns:
            return  # the pod's netns is gone (its end of the veth with it), or never was one: nothing of ours
        try:
            try:
                ns_ipr = _netns_iproute(ns_fd, netns)
            except NetnsNotFound:
                return
            try:
                with _step("delete pod interface", missing_ok=True):
                    link = _link(ns_ipr, ifname)
                    # Only a veth: whatever else is called ifname there was not made by us.
                    if link is not None and link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) == "veth":
                        ns_ipr.link("del", index=link["index"])
            finally:
                ns_ipr.close()
        finally:
            os.close(ns_fd)

    def _delete_host_veth(self, host: str) -> None:
        """Delete the veth pair now, from its host end (attach's undo: synchronous, so a failed ADD leaves nothing)."""
        with _step("delete veth", missing_ok=True):
            self._host().link("del", ifname=host)  # takes the pod end with it, wherever it is

    # ------------------------------------------------------------ check and ports

    def _check(self, att: Attachment) -> list[str]:
        host = att.host_ifname
        diffs: list[str] = []
        ovsdb = self._ovsdb
        ovsdb.sync("connect OVSDB")
        port = ovsdb.port(host)
        bridge = ovsdb.bridge(att.bridge)
        if bridge is None:
            diffs.append(f"bridge {att.bridge} does not exist")
        if port is None:
            diffs.append(f"OVS port {host} missing from bridge {att.bridge}")
        else:
            owner = ovsdb.bridge_of(port)
            if owner is None or owner.name != att.bridge:
                diffs.append(f"OVS port {host} is on bridge {owner.name if owner else '(none)'}, "
                             f"expected {att.bridge}")
            tag = port.tag[0] if port.tag else None
            if tag != att.vlan:
                diffs.append(f"OVS port {host} has VLAN tag {tag if tag is not None else 'none'}, expected {att.vlan}")
            if port.trunks:
                diffs.append(f"OVS port {host} trunks VLANs {sorted(port.trunks)}, expected an access port")
            expected = {EXT_CONTAINER_ID: att.container_id, EXT_IFNAME: att.ifname, EXT_NETNS: att.netns}
            for key, value in expected.items():
                got = port.external_ids.get(key)
                if got != value:
                    diffs.append(f"OVS port {host} external_ids:{key} is {got!r}, expected {value!r}")
            for interface in port.interfaces:
                if interface.error:
                    diffs.append(f"OVS interface {interface.name} error: {''.join(interface.error)}")

        host_link = _link(self._host(), host)
        reaped = host_link is not None and host_link.get("IFLA_GROUP") == _REAP_GROUP  # being deleted: gone already
        if host_link is None or reaped:
            diffs.append(f"host interface {host} missing")
        else:
            if host_link.get("IFLA_MTU") != att.mtu:
                diffs.append(f"host interface {host} has MTU {host_link.get('IFLA_MTU')}, expected {att.mtu}")
            if not host_link["flags"] & 1:  # IFF_UP
                diffs.append(f"host interface {host} is down")

        try:
            ns_fd = _open_netns(att.netns)
        except InvalidNetns as exc:
            diffs.append(exc.reason)
            return diffs
        try:
            ns_ipr = _netns_iproute(ns_fd, att.netns)
            try:
                diffs += self._check_pod(att, ns_fd, ns_ipr, userspace=bridge is not None
                                         and bridge.datapath_type == "netdev",
                                         reaped_peer=host_link["index"] if reaped and host_link is not None else None)
            finally:
                ns_ipr.close()
        except NetnsNotFound:
            diffs.append(f"network namespace {att.netns} does not exist")
        finally:
            os.close(ns_fd)
        return diffs

    def _check_pod(self, att: Attachment, ns_fd: int, ns_ipr: IPRoute, *, userspace: bool,
                   reaped_peer: int | None) -> list[str]:
        where = f"{att.ifname} in {att.netns}"
        link = _link(ns_ipr, att.ifname)
        if link is None or (reaped_peer is not None and link.get("IFLA_LINK") == reaped_peer):  # being deleted
            return [f"interface {where} missing"]
        diffs: list[str] = []
        if link.get("IFLA_MTU") != att.mtu:
            diffs.append(f"interface {where} has MTU {link.get('IFLA_MTU')}, expected {att.mtu}")
        if not link["flags"] & 1:  # IFF_UP
            diffs.append(f"interface {where} is down")
        index = link["index"]
        want = ipaddress.ip_interface(att.address)
        have = [ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ns_ipr.get_addr(index=index)]
        if want not in have:
            others = ", ".join(str(a) for a in have if a.version == want.version) or "none"
            diffs.append(f"address {want} missing on {where} (has {others})")
        gateway = ipaddress.ip_address(att.gateway)
        family = socket.AF_INET if gateway.version == 4 else socket.AF_INET6
        gateways = sorted(str(r.get("RTA_GATEWAY")) for r in ns_ipr.get_default_routes(family=family)
                          if r.get("RTA_OIF") == index)
        if str(gateway) not in gateways:
            diffs.append(f"default route via {gateway} missing in {att.netns}"
                         + (f" (has via {', '.join(gateways)})" if gateways else ""))
        if userspace:
            with _socket_in_netns(ns_fd, att.netns, socket.AF_INET, socket.SOCK_DGRAM) as s:
                if _ethtool_value(s, att.ifname, _ETHTOOL_GTXCSUM):
                    diffs.append(f"TX checksum offload is on for {where}: TCP breaks on a userspace (netdev) bridge")
        return diffs

    def _ports(self, bridge_name: str) -> list[PortRecord]:
        ovsdb = self._ovsdb
        ovsdb.sync("list OVS ports")
        bridge = ovsdb.bridge(bridge_name)
        if bridge is None:
            return []
        records = [
            PortRecord(
                host_ifname=port.name,
                bridge=bridge_name,
                vlan=port.tag[0] if port.tag else None,
                container_id=port.external_ids[EXT_CONTAINER_ID],
                ifname=port.external_ids.get(EXT_IFNAME, ""),
                netns=port.external_ids.get(EXT_NETNS, ""),
            )
            for port in bridge.ports
            if EXT_CONTAINER_ID in port.external_ids
        ]
        return sorted(records, key=lambda r: r.host_ifname)  # deterministic order for GC and tests

    # ------------------------------------------------------------ bridges (lab)

    def _ensure_bridge(self, name: str, datapath_type: str) -> None:
        ovsdb = self._ovsdb
        ovsdb.sync("ensure bridge")

        def build(txn: ovs.db.idl.Transaction) -> None:
            existing = ovsdb.bridge(name)
            if existing is not None:
                if existing.datapath_type != datapath_type:
                    existing.datapath_type = datapath_type
                return
            interface = txn.insert(txn.idl.tables["Interface"])
            interface.name = name
            interface.type = "internal"
            port = txn.insert(txn.idl.tables["Port"])
            port.name = name
            port.interfaces = [interface]
            bridge = txn.insert(txn.idl.tables["Bridge"])
            bridge.name = name
            bridge.datapath_type = datapath_type
            bridge.ports = [port]
            ovsdb.root("ensure bridge").addvalue("bridges", bridge)

        ovsdb.transact("ensure bridge", build)

    def _delete_bridge(self, name: str) -> None:
        ovsdb = self._ovsdb
        ovsdb.sync("delete bridge")

        def build(txn: ovs.db.idl.Transaction) -> None:
            bridge = ovsdb.bridge(name)
            if bridge is not None:
                ovsdb.root("delete bridge").delvalue("bridges", bridge)

        ovsdb.transact("delete bridge", build)

    def _connect_bridges(self, a: str, b: str) -> tuple[str, str]:
        ovsdb = self._ovsdb
        ovsdb.sync("connect bridges")
        name_a, name_b = f"patch-{a}-{b}", f"patch-{b}-{a}"

        def build(txn: ovs.db.idl.Transaction) -> None:
            for bridge_name, port_name, peer_name in ((a, name_a, name_b), (b, name_b, name_a)):
                bridge = ovsdb.bridge(bridge_name)
                if bridge is None:
                    raise DataplaneError("connect bridges", f"bridge {bridge_name} does not exist")
                if ovsdb.port(port_name) is not None:
                    continue
                interface = txn.insert(txn.idl.tables["Interface"])
                interface.name = port_name
                interface.type = "patch"
                interface.options = {"peer": peer_name}
                port = txn.insert(txn.idl.tables["Port"])
                port.name = port_name
                port.interfaces = [interface]  # no tag and no trunks: a trunk of every VLAN
                bridge.addvalue("ports", port)

        ovsdb.transact("connect bridges", build)
        return name_a, name_b


@contextlib.contextmanager
def _step(step: str, *, missing_ok: bool = False) -> Iterator[None]:
    """Turn a netlink or OS error inside the block into ``DataplaneError(step, …)``."""
    try:
        yield
    except DataplaneError:
        raise
    except NetlinkError as exc:
        if missing_ok and _nl_missing(exc):
            return
        raise DataplaneError(step, f"netlink: {os.strerror(exc.code) if exc.code else exc}") from exc
    except OSError as exc:
        if missing_ok and exc.errno in (errno.ENODEV, errno.ENOENT):
            return
        raise DataplaneError(step, exc.strerror or str(exc)) from exc
