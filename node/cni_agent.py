"""The per-node CNI agent: what ADD, DEL, CHECK, GC and STATUS do, over the IPAM and Dataplane.

ADD: check that CNI_NETNS is a pod network namespace (before any etcd write),
allocate (one Store transaction in the common case), then plumb the veth and OVS
port tagged with the pool's VLAN; if plumbing fails, release the address before
reporting the error, so a failed ADD leaves nothing behind. An address this ADD
allocated and never plumbed goes back without cool-down (nothing can have learnt
it; a burst of failing ADDs must not exhaust the pool); one that was plumbed (a
repeated ADD) or may still be (the dataplane's undo failed) cools down. A
repeated ADD gets the same address and has its interface rebuilt. An ADD of a
container whose address another node holds is refused (code 104) and touches
nothing: the handle names its node.
DEL: unplumb and release; with a cool-down the two overlap (the address cannot be
handed out again before the cool-down ends anyway), without one unplumbing comes
first, so an address is never handed out while a port on the bridge still carries
it (the veth itself may linger a moment after, off the bridge). Both steps
succeed when there is nothing left to remove, which makes DEL idempotent (the
runtime may call it many times, or after a failed ADD). DEL never releases
another node's allocation of the same container ID.
CHECK: the handle still holds the address of ``prevResult`` and the dataplane
matches it. GC: release and unplumb every attachment of this network that the
runtime no longer lists. STATUS: ready when the Store answers and a pool exists.

Errors carry the CNI spec's codes (``cni.request``): an unreachable etcd is 11
"try again later", so the runtime retries. Every command the runtime sends is counted
and timed (runtime clock) by command and the code it answers (0: success; an unexpected
exception is 5, as the socket server answers it); the DELs a GC makes are its own work,
not commands. A command that failed on etcd also counts one etcd error (component
``cni-agent``). It must not know sockets, etcd, netlink, OVS or Prometheus: it sees
them only as the Store, Dataplane and Metrics ports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from cni.ipam import (
    Allocation,
    CorruptRecord,
    HeldElsewhere,
    Ipam,
    PoolExhausted,
    TooMuchContention,
    UnknownPool,
)
from cni.pools import HANDLES, PodRef
from cni.request import (
    CHECK_FAILED,
    DATAPLANE_FAILURE,
    HELD_ELSEWHERE,
    INVALID_CONFIG,
    INVALID_ENV,
    INVALID_RECORD,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    POOL_EXHAUSTED,
    TRY_AGAIN_LATER,
    CniError,
    CniRequest,
)
from foundation.logic.mutex import Mutex
from foundation.ports import Runtime, StoreError, StoreUnavailable
from foundation.ports.dataplane import Attachment, Dataplane, DataplaneError, InvalidNetns, NetnsNotFound
from foundation.ports.metrics import CNI_REQUEST_SECONDS, CNI_REQUESTS, ETCD_ERRORS, NO_METRICS, Metrics

T = TypeVar("T")
COMPONENT = "cni-agent"  # the etcd errors' component label


@dataclass(frozen=True)
class NodeConfig:
    """What the node agent knows about its node; the network config may override bridge and MTU."""

    node: str
    bridge: str = "br-int"
    mtu: int = 1500


class CniAgent:
    def __init__(self, ipam: Ipam, dataplane: Dataplane, runtime: Runtime, config: NodeConfig,
                 metrics: Metrics = NO_METRICS) -> None:
        self.ipam = ipam
        self.dataplane = dataplane
        self.runtime = runtime
        self.config = config
        self.metrics = metrics
        # One command at a time per (container, interface): a runtime that timed out on a slow
        # ADD sends DEL while the ADD still runs here; the DEL must see what the ADD did.
        self._busy: dict[tuple[str, str], tuple[Mutex, int]] = {}

    @contextlib.asynccontextmanager
    async def _exclusive(self, request: CniRequest) -> AsyncIterator[None]:
        key = (request.container_id, request.ifname)
        mutex, users = self._busy.get(key, (None, 0))
        if mutex is None:
            mutex = Mutex(self.runtime)
        self._busy[key] = (mutex, users + 1)
        try:
            async with mutex:
                yield
        finally:
            mutex, users = self._busy[key]
            if users == 1:
                del self._busy[key]
            else:
                self._busy[key] = (mutex, users - 1)

    async def start(self) -> None:
        """Load the pools and this node's blocks (raises ``StoreUnavailable`` if etcd is down)."""
        try:
            await self.ipam.load()
        except StoreError:
            self._etcd_error()
            raise

    # ------------------------------------------------------------------ metrics
    def _etcd_error(self) -> None:
        self.metrics.inc(ETCD_ERRORS, component=COMPONENT)

    async def _answer(self, command: str, call: Awaitable[T]) -> T:
        """Await one command of the runtime, counting and timing it by the code it answers."""
        started = self.runtime.now()
        try:
            result = await call
        except CniError as exc:
            self._answered(command, exc.code, started)
            raise
        except Exception:  # a bug: the socket server answers it as an I/O failure
            self._answered(command, IO_FAILURE, started)
            raise
        self._answered(command, 0, started)
        return result

    def _answered(self, command: str, code: int, started: float) -> None:
        node, answer = self.config.node, str(code)
        self.metrics.inc(CNI_REQUESTS, node=node, command=command, code=answer)
        self.metrics.observe(CNI_REQUEST_SECONDS, self.runtime.now() - started, node=node, command=command,
                             code=answer)

    # ------------------------------------------------------------------ helpers
    def _attachment(self, request: CniRequest, allocation: Allocation) -> Attachment:
        net = request.network
        return Attachment(
            container_id=request.container_id,
            netns=request.netns,
            ifname=request.ifname,
            bridge=net.get("bridge", self.config.bridge),
            vlan=allocation.pool.vlan,
            address=allocation.cidr,
            gateway=str(allocation.pool.gateway),
            mtu=int(net.get("mtu", self.config.mtu)),
            gratuitous_arp=bool(net.get("gratuitousArp", False)),
        )

    async def _store_call(self, what: str, coro: Any) -> Any:
        """Await an IPAM call, turning its failures into CNI errors."""
        try:
            return await coro
        except StoreUnavailable as exc:
            self._etcd_error()
            raise CniError(TRY_AGAIN_LATER, f"etcd unavailable while {what}", str(exc)) from exc
        except TooMuchContention as exc:
            raise CniError(TRY_AGAIN_LATER, f"too much contention while {what}", str(exc)) from exc
        except PoolExhausted as exc:
            raise CniError(POOL_EXHAUSTED, "no free address", str(exc)) from exc
        except UnknownPool as exc:
            raise CniError(INVALID_CONFIG, "network config names an unknown pool", str(exc)) from exc
        except HeldElsewhere as exc:
            # Not 7 (the config is fine) nor 11 (nothing transient: the other node holds it until
            # a DEL there): a plugin-specific code, as the spec provides for.
            raise CniError(HELD_ELSEWHERE, f"container is attached on node {exc.node}", str(exc)) from exc
        except CorruptRecord as exc:
            raise CniError(INVALID_RECORD, "an IPAM record in etcd is invalid", str(exc)) from exc
        except StoreError as exc:
            self._etcd_error()
            raise CniError(TRY_AGAIN_LATER, f"etcd refused a request while {what}", str(exc)) from exc

    # ------------------------------------------------------------------ commands
    async def add(self, request: CniRequest) -> dict[str, Any]:
        return await self._answer("ADD", self._add_exclusive(request))

    async def _add_exclusive(self, request: CniRequest) -> dict[str, Any]:
        async with self._exclusive(request):
            return await self._add(request)

    @staticmethod
    def _netns_error(exc: InvalidNetns) -> CniError:
        if isinstance(exc, NetnsNotFound):
            return CniError(INVALID_ENV, "CNI_NETNS does not exist", str(exc))
        return CniError(INVALID_ENV, "CNI_NETNS is not a pod network namespace", str(exc))

    async def _add(self, request: CniRequest) -> dict[str, Any]:
        try:
            # Before allocating: a bad CNI_NETNS must cost no etcd write and no address.
            await self.dataplane.check_netns(request.netns)
        except InvalidNetns as exc:
            raise self._netns_error(exc) from exc
        except DataplaneError as exc:
            raise CniError(DATAPLANE_FAILURE, "could not open the pod's network namespace", str(exc)) from exc
        allocation: Allocation = await self._store_call("allocating", self.ipam.allocate(
            request.container_id, request.ifname, pools=request.network.get("pools", ()),
            pod=PodRef.from_cni_args(request.args), network=request.network_name))
        attachment = self._attachment(request, allocation)
        self.runtime.trace("cni-add", container=request.container_id, address=allocation.cidr,
                           vlan=attachment.vlan, repeat=allocation.existing)
        try:
            if allocation.existing:
                # A repeated ADD: rebuild the interface rather than trust whatever is there.
                await self.dataplane.detach(request.container_id, request.ifname, request.netns)
            interface = await self.dataplane.attach(attachment)
        except (DataplaneError, StoreError) as exc:
            # Never plumbed (a fresh allocation, and the dataplane removed all it made): no cool-down.
            plumbed = allocation.existing or not getattr(exc, "undone", True)
            await self._undo_allocation(request, cool_down=plumbed)
            if isinstance(exc, InvalidNetns):
                raise self._netns_error(exc) from exc
            raise CniError(DATAPLANE_FAILURE, "could not plumb the pod interface", str(exc)) from exc
        gateway = str(allocation.pool.gateway)
        return {
            "interfaces": [
                {"name": interface.host_ifname, "mac": interface.host_mac},
                {"name": interface.pod_ifname, "mac": interface.pod_mac, "sandbox": interface.netns},
            ],
            "ips": [{"address": allocation.cidr, "gateway": gateway, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
            "dns": {},
        }

    async def _undo_allocation(self, request: CniRequest, *, cool_down: bool) -> None:
        try:
            await self.ipam.release(request.container_id, request.ifname, cool_down=cool_down)
        except (StoreError, TooMuchContention, CorruptRecord) as exc:
            # The runtime calls DEL after a failed ADD, and cnictl check finds what DEL misses.
            if isinstance(exc, StoreError):
                self._etcd_error()
            self.runtime.trace("cni-add-undo-failed", container=request.container_id, error=str(exc))

    async def delete(self, request: CniRequest) -> None:
        await self._answer("DEL", self._delete_exclusive(request))

    async def _delete_exclusive(self, request: CniRequest) -> None:
        async with self._exclusive(request):
            await self._delete(request)

    async def _delete(self, request: CniRequest) -> None:
        if self.ipam.cooldown > 0:
            # A released address cools down before anyone gets it again, so the release may
            # overlap the unplumbing (an OVSDB round trip; the veth is deleted in the background).
            detaching = self.runtime.spawn(self._detach(request), name=f"detach {request.container_id}")
            try:
                released = await self._store_call("releasing", self._release(request))
            finally:
                await detaching.join()
        else:
            await self._detach(request)  # no cool-down: never free an address still plumbed
            released = await self._store_call("releasing", self._release(request))
        self.runtime.trace("cni-del", container=request.container_id,
                           address=released.cidr if released else None)

    async def _release(self, request: CniRequest) -> Allocation | None:
        try:
            return await self.ipam.release(request.container_id, request.ifname)
        except CorruptRecord as exc:
            # DEL must finish (the runtime retries it forever otherwise): the invalid record is
            # logged and left for an operator; cnictl check reports the address it pins.
            self.runtime.trace("cni-del-invalid-record", container=request.container_id, error=str(exc))
            return None

    async def _detach(self, request: CniRequest) -> None:
        try:
            await self.dataplane.detach(request.container_id, request.ifname, request.netns or None)
        except DataplaneError as exc:
            raise CniError(DATAPLANE_FAILURE, "could not remove the pod interface", str(exc)) from exc

    async def check(self, request: CniRequest) -> None:
        await self._answer("CHECK", self._check(request))

    async def _check(self, request: CniRequest) -> None:
        if not request.prev_result:
            raise CniError(INVALID_CONFIG, "CHECK needs prevResult", "the runtime passes the result of ADD")
        allocation = await self._store_call("checking", self.ipam.lookup(request.container_id, request.ifname))
        if allocation is None:
            raise CniError(CHECK_FAILED, "no address is allocated to this container",
                           f"{request.container_id}/{request.ifname}")
        expected = [ip.get("address") for ip in request.prev_result.get("ips", [])]
        if allocation.cidr not in expected:
            raise CniError(CHECK_FAILED, "allocated address differs from prevResult",
                           f"etcd has {allocation.cidr}, prevResult has {', '.join(map(str, expected)) or 'none'}")
        try:
            problems = await self.dataplane.check(self._attachment(request, allocation))
        except NetnsNotFound as exc:
            raise CniError(INVALID_ENV, "CNI_NETNS does not exist", str(exc)) from exc
        except DataplaneError as exc:  # the dataplane could not look (not a bug): the spec's plugin-specific code
            raise CniError(DATAPLANE_FAILURE, "could not check the pod interface", str(exc)) from exc
        if problems:
            raise CniError(CHECK_FAILED, "pod interface differs from what ADD made", "; ".join(problems))

    async def gc(self, request: CniRequest) -> None:
        """Collect this node's attachments of this network that the runtime no longer lists."""
        await self._answer("GC", self._gc(request))

    async def _gc(self, request: CniRequest) -> None:
        """GC's work; the DELs it makes are not the runtime's commands (not counted as such).

        Selection is by the handle records (node and network), not by whose block holds the
        address: a block of ours may lend addresses to other nodes' pods, and our pods may
        hold addresses borrowed from other nodes' blocks.
        """
        keep = set(request.valid_attachments)
        records = await self._store_call("collecting", self.ipam.store.range(HANDLES))
        decoded = [self.ipam.decode_handle(kv) for kv in records.kvs]  # an invalid one is logged and skipped
        ours = [h for h in decoded if h is not None and h.node == self.config.node]
        for handle in ours:
            if handle.network == request.network_name and (handle.container_id, handle.ifname) not in keep:
                await self._delete_exclusive(CniRequest("DEL", request.cni_version, request.network,
                                                        handle.container_id, "", handle.ifname))
        # Ports no allocation of this node explains (a DEL that released, then crashed before
        # unplumbing): ours by their external_ids, and not any network's live attachment here.
        held = {(h.container_id, h.ifname) for h in ours}
        for port in await self.dataplane.ports(request.network.get("bridge", self.config.bridge)):
            if (port.container_id, port.ifname) not in keep and (port.container_id, port.ifname) not in held:
                await self.dataplane.detach(port.container_id, port.ifname, None)

    async def status(self, request: CniRequest) -> None:
        await self._answer("STATUS", self._status(request))

    async def _status(self, request: CniRequest) -> None:
        try:
            pools = await self.ipam.refresh_pools()
        except StoreError as exc:
            self._etcd_error()
            raise CniError(PLUGIN_NOT_AVAILABLE, "etcd unavailable", str(exc)) from exc
        wanted = request.network.get("pools") or list(pools)
        if not any(name in pools for name in wanted):
            raise CniError(PLUGIN_NOT_AVAILABLE, "no IP pool available to this network",
                           f"wanted {', '.join(wanted) or 'any pool'}; defined: {', '.join(pools) or 'none'}")
