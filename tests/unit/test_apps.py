"""Apps and versions (control/apps.py) on the sim Store and sim Cells: records, Cells, rights, crashes.

Each test builds a Region of three Cells (``SimWorkloads`` over ``SimCluster``) and the
apps service over one ``MemoryStore``; assertions read the Cells' controllers and the
store's keys, never only "no exception". The crash tests stop a call at every Cluster
call and every store write it makes, start a fresh service on the same store and Cells
(a restarted control service), run ``reconcile_all`` and compare the Cells with the
records.
"""

from __future__ import annotations

import json

import pytest

from control import apps as a
from control.activity import ACTIVITY, decode, recount
from control.auth import Principal
from control.members import Membership, Resource, Role, member_key
from foundation.ports import PutOp, StoreUnavailable
from foundation.ports import control as port
from foundation.ports.workloads import ControllerSpec
from sim.adapters.cluster import SimCluster
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore
from sim.adapters.workloads import SimWorkloads

ADMIN = Principal("ops", "admin")
ALICE = Principal("alice", "user")
BOB = Principal("bob", "user")
IMAGE = "registry.local:5000/shop:" + "a" * 40
IMAGE2 = "registry.local:5000/shop:" + "b" * 40
CELLS = ("cell-a", "cell-b", "cell-c")


class Crash(Exception):
    """The control service dies here (raised by the wrappers below; nothing catches it)."""


class CrashingWorkloads:
    """A Cell's Workloads that dies at the ``limit``-th call of the whole Region (shared counter)."""

    def __init__(self, inner: SimWorkloads, counter: list[int]) -> None:
        self.inner, self.counter = inner, counter

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)

        async def call(*args, **kwargs):
            self.counter[0] -= 1
            if self.counter[0] == 0:
                raise Crash(name)
            return await method(*args, **kwargs)

        return call


class CrashingStore:
    """The store, dying at its ``limit``-th transaction (the counter is shared with nothing else)."""

    def __init__(self, inner, counter: list[int]) -> None:
        self.inner, self.counter = inner, counter

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    async def txn(self, compares, success, failure=None):
        if any(isinstance(op, PutOp) for op in success) or any(type(op).__name__ == "DeleteOp" for op in success):
            self.counter[0] -= 1
            if self.counter[0] == 0:
                raise Crash("txn")
        return await self.inner.txn(compares, success, failure)


class Region:
    def __init__(self) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.store = self.server.client("control", latency=0.001)
        self.clusters = {c: SimCluster(c, self.rt) for c in CELLS}
        self.cells = {c: SimWorkloads(self.clusters[c], runtime=self.rt, latency=0.001) for c in CELLS}
        self.apps = a.Apps(self.store, self.rt, self.cells)
        self.ids = 0

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def rid(self) -> str:
        self.ids += 1
        return f"req-{self.ids}"

    def snapshot(self):
        keys = [(kv.key, kv.value, kv.mod_revision) for kv in self.server._range("/", True).kvs]
        cells = {c: (dict(w.namespaces), dict(w.controllers)) for c, w in self.cells.items()}
        return keys, cells

    def refused(self, error: type[Exception], coro) -> Exception:
        before = self.snapshot()
        with pytest.raises(error) as caught:
            self.run(coro)
        assert self.snapshot() == before, "a refused call changed the store or a Cell"
        return caught.value

    def controllers(self, cell: str) -> dict[str, ControllerSpec | None]:
        return {name: info.spec for (_, name), info in sorted(self.cells[cell].controllers.items())}

    def create(self, who=ALICE, name="shop", cells=("cell-a", "cell-b"), **kw) -> a.AppView:
        return self.run(self.apps.create_app(who, name, list(cells), request_id=self.rid(), **kw))

    def deploy(self, draft: a.Draft, who=ALICE, app="shop") -> a.AppView:
        return self.run(self.apps.deploy(who, app, draft, request_id=self.rid()))

    def give(self, app: str, user: str, role: str) -> None:
        record = Membership(Resource("app", app), user, Role.parse(role), "ops", 1.7e9)
        self.run(self.store.put(record.key, record.to_bytes()))

    def activity(self, app: str = "shop") -> list[str]:
        kvs = self.server._range(f"{ACTIVITY}app/{app}/", True).kvs
        return [decode(kv).action for kv in reversed(kvs)]  # oldest first


def spec(version: str, replicas: int, image: str = IMAGE, **changes) -> ControllerSpec:
    fields = {"app": "shop", "version": version, "image": image, "replicas": replicas, "cpu_millis": 250,
              "memory_mib": 128, "env": (("MODE", "prod"),), "port": 8080}
    fields.update(changes)
    return ControllerSpec(**fields)


FIRST = a.Draft(image=IMAGE, replicas=3, cpu_millis=250, memory_mib=128, env=(("MODE", "prod"),))


# --------------------------------------------------------------------------- create, deploy, prefill, scale, delete


def test_an_app_is_a_namespace_in_each_of_its_cells_and_its_creator_is_owner():
    r = Region()
    view = r.create()
    assert view.app.cells == ("cell-a", "cell-b") and view.app.state == "active" and view.pending == {}
    assert list(r.cells["cell-a"].namespaces) == ["shop"] and list(r.cells["cell-b"].namespaces) == ["shop"]
    assert r.cells["cell-c"].namespaces == {}  # not one of its Cells
    owner = r.run(r.store.get(member_key(Resource("app", "shop"), "alice")))
    assert json.loads(owner.value)["role"] == "owner"
    assert r.activity() == ["app.create"]
    assert [x.name for x in r.run(r.apps.list_apps(ALICE))] == ["shop"]
    assert r.run(r.apps.list_apps(BOB)) == [] and len(r.run(r.apps.list_apps(ADMIN))) == 1
    r.refused(port.AlreadyExists, r.apps.create_app(BOB, "shop", ["cell-a", "cell-c"], request_id="x1"))


@pytest.mark.parametrize("name,cells,field", [
    ("shop", ["cell-a"], "cells"),  # fewer than two Cells: one machine room must be able to fail
    ("shop", [], "cells"), ("shop", ["cell-a", "cell-a"], "cells"), ("shop", ["cell-a", "cell-z"], "cells"),
    ("shop", "cell-a,cell-b", "cells"), ("Shop", ["cell-a", "cell-b"], "name"),
    ("a" * 41, ["cell-a", "cell-b"], "name"),
    ("../x", ["cell-a", "cell-b"], "name"), ("shop", ["cell-a", 7], "cells"),
])
def test_a_bad_create_is_invalid_argument_and_writes_nothing(name, cells, field):
    r = Region()
    err = r.refused(port.InvalidArgument, r.apps.create_app(ALICE, name, cells, request_id="x1"))
    assert err.field == field


def test_a_version_is_one_controller_per_cell_labelled_and_the_next_is_prefilled_from_it():
    r = Region()
    r.create()
    view = r.deploy(FIRST)
    assert [v.version.name for v in view.versions] == ["v1"] and view.versions[0].pending == ()
    for cell in ("cell-a", "cell-b"):
        assert r.controllers(cell) == {"shop-v1": spec("v1", 3)}
        assert r.cells[cell].controllers[("shop", "shop-v1")].spec.labels == {"app": "shop", "version": "v1"}
    draft = r.run(r.apps.prefill(ALICE, "shop"))
    assert draft == a.Draft(IMAGE, {"cell-a": 3, "cell-b": 3}, 250, 128, (("MODE", "prod"),), 8080)
    view = r.deploy(a.Draft(image=IMAGE2))  # only the image changes: the rest is v1's
    assert [v.version.name for v in view.versions] == ["v1", "v2"]
    assert r.controllers("cell-b") == {"shop-v1": spec("v1", 3), "shop-v2": spec("v2", 3, IMAGE2)}
    r.deploy(a.Draft(replicas={"cell-a": 1, "cell-b": 0}, env={"MODE": "gray", "DEBUG": "1"}))
    assert r.controllers("cell-a")["shop-v3"] == spec("v3", 1, IMAGE2, env=(("MODE", "gray"), ("DEBUG", "1")))
    assert r.controllers("cell-b")["shop-v3"].replicas == 0
    assert r.activity() == ["app.create", "version.deploy", "version.deploy", "version.deploy"]


@pytest.mark.parametrize("draft,field", [
    (a.Draft(replicas=3), "image"),  # the first version has nothing to be prefilled from
    (a.Draft(image=IMAGE), "replicas"),
    (a.Draft(image="registry.local/shop:latest", replicas=1), "image"),  # a tag is a full commit id
    (a.Draft(image=IMAGE, replicas=1001), "replicas"), (a.Draft(image=IMAGE, replicas=-1), "replicas"),
    (a.Draft(image=IMAGE, replicas={"cell-a": 1}), "replicas"),
    (a.Draft(image=IMAGE, replicas=1, env=tuple((f"V{i}", "") for i in range(65))), "env"),
    (a.Draft(image=IMAGE, replicas=1, env={"1X": "y"}), "env"),
    (a.Draft(image=IMAGE, replicas=1, env=(("A", "x\n"),)), "env"),
    (a.Draft(image=IMAGE, replicas=1, cpu_millis=0), "cpu_millis"),
    (a.Draft(image=IMAGE, replicas=1, memory_mib=10**9), "memory_mib"),
    (a.Draft(image=IMAGE, replicas=1, port=0), "port"),
])
def test_a_bad_version_is_invalid_argument_and_writes_nothing(draft, field):
    r = Region()
    r.create()
    err = r.refused(port.InvalidArgument, r.apps.deploy(ALICE, "shop", draft, request_id="x9"))
    assert err.field == field


def test_scale_in_one_cell_or_all_and_delete_versions_then_the_app():
    r = Region()
    r.create()
    r.deploy(FIRST)
    r.run(r.apps.scale(ALICE, "shop", "v1", 5, cell="cell-b", request_id="s1"))
    assert (r.controllers("cell-a")["shop-v1"].replicas, r.controllers("cell-b")["shop-v1"].replicas) == (3, 5)
    view = r.run(r.apps.scale(ALICE, "shop", "v1", 2, request_id="s2"))
    assert view.versions[0].version.replicas == {"cell-a": 2, "cell-b": 2} and view.versions[0].pending == ()
    assert r.controllers("cell-a")["shop-v1"].replicas == 2
    before = r.snapshot()
    r.run(r.apps.scale(ALICE, "shop", "v1", 2, request_id="s3"))  # already so: nothing written, nothing recorded
    assert r.snapshot() == before
    r.refused(port.InvalidArgument, r.apps.scale(ALICE, "shop", "v1", 1001, request_id="s4"))
    r.refused(port.InvalidArgument, r.apps.scale(ALICE, "shop", "v1", 1, cell="cell-c", request_id="s5"))
    r.refused(port.NotFound, r.apps.scale(ALICE, "shop", "v7", 1, request_id="s6"))
    r.deploy(a.Draft(image=IMAGE2))
    r.refused(port.FailedPrecondition, r.apps.delete_app(ALICE, "shop", request_id="d0"))
    for version in ("v1", "v2"):
        r.run(r.apps.delete_version(ALICE, "shop", version, request_id=f"d-{version}"))
    assert r.controllers("cell-a") == {} and r.controllers("cell-b") == {}
    assert r.server._range(a.VERSIONS, True).kvs == () and r.server._range(a.STATUS, True).kvs == ()
    view = r.run(r.apps.delete_app(ALICE, "shop", request_id="d1"))
    assert view.app.name == "shop"
    assert all(w.namespaces == {} for w in r.cells.values())
    assert r.run(r.store.get(a.app_key("shop"))) is None
    assert r.server._range("/platform/members/app/shop/", True).kvs == ()  # its memberships went with it
    assert r.activity() == ["app.create", "version.deploy", "app.scale", "app.scale", "version.deploy",
                            "version.delete", "version.delete", "app.delete"]
    counted = r.run(recount(r.store))
    assert counted.equal, counted  # the daily counts, kept in the same transactions, equal a recount


# --------------------------------------------------------------------------- rights


def test_rights_come_from_the_membership_table_and_refusals_write_nothing():
    r = Region()
    r.create()
    r.create(name="lab", production=False)
    r.deploy(FIRST)
    r.refused(port.NotFound, r.apps.deploy(BOB, "shop", a.Draft(image=IMAGE2), request_id="b1"))  # outsider
    r.refused(port.NotFound, r.apps.show(BOB, "shop"))
    r.give("shop", "bob", "developer")
    r.give("lab", "bob", "developer")
    r.refused(port.PermissionDenied, r.apps.deploy(BOB, "shop", a.Draft(image=IMAGE2), request_id="b2"))
    r.run(r.apps.deploy(BOB, "lab", a.Draft(image=IMAGE, replicas=1), request_id="b3"))  # non-production: ok
    r.refused(port.PermissionDenied, r.apps.scale(BOB, "shop", "v1", 1, request_id="b4"))
    r.refused(port.PermissionDenied, r.apps.delete_version(BOB, "shop", "v1", request_id="b5"))
    r.give("shop", "bob", "master")
    r.run(r.apps.scale(BOB, "shop", "v1", 1, request_id="b6"))
    r.refused(port.PermissionDenied, r.apps.delete_app(BOB, "lab", request_id="b7"))
    r.give("shop", "bob", "guest")
    assert r.run(r.apps.show(BOB, "shop")).versions[0].version.replicas == {"cell-a": 1, "cell-b": 1}
    r.refused(port.PermissionDenied, r.apps.prefill(Principal("discovery", "discovery"), "shop"))
    r.run(r.apps.delete_version(ADMIN, "shop", "v1", request_id="b8"))  # admins above all


# --------------------------------------------------------------------------- Cells away, crashes


def test_a_cell_away_leaves_it_pending_and_reconcile_brings_it_in():
    r = Region()
    r.create()
    r.clusters["cell-b"].cut_off()
    view = r.deploy(FIRST)
    assert set(view.pending) == {"cell-b"} and view.versions[0].pending == ("cell-b",)
    assert r.controllers("cell-a") == {"shop-v1": spec("v1", 3)} and r.cells["cell-b"].controllers == {}
    r.clusters["cell-b"].available = True
    done = r.run(r.apps.reconcile_all())
    assert [d.pending for d in done] == [{}]
    assert r.controllers("cell-b") == {"shop-v1": spec("v1", 3)}
    assert r.run(r.apps.show(ALICE, "shop")).versions[0].pending == ()


def _expected(r: Region) -> dict[str, dict[str, ControllerSpec]]:
    """What every Cell must hold according to the records now (after a reconcile: nothing is deleting)."""
    want: dict[str, dict[str, ControllerSpec]] = {c: {} for c in CELLS}
    for kv in r.server._range(a.VERSIONS, True).kvs:
        version = a.decode_version(kv)
        assert version.state == "active", f"{version.name} still deleting after reconcile"
        for cell in version.replicas:
            want[cell][a.controller_name(version.app, version.name)] = version.spec(cell)
    return want


STEPS = [
    ("create", lambda r, rid: r.apps.create_app(ALICE, "shop", ["cell-a", "cell-b"], request_id=rid)),
    ("deploy", lambda r, rid: r.apps.deploy(ALICE, "shop", a.Draft(image=IMAGE2), request_id=rid)),
    ("scale", lambda r, rid: r.apps.scale(ALICE, "shop", "v1", 7, cell="cell-a", request_id=rid)),
    ("delete_version", lambda r, rid: r.apps.delete_version(ALICE, "shop", "v1", request_id=rid)),
    ("delete_app", lambda r, rid: r.apps.delete_app(ALICE, "shop", request_id=rid)),
]


def _prepare(r: Region, step: str) -> None:
    if step == "create":
        return
    r.create()
    if step != "delete_app":
        r.deploy(FIRST)


@pytest.mark.parametrize("where", ["cluster", "store"])
@pytest.mark.parametrize("step", [s for s, _ in STEPS])
def test_a_crash_at_any_point_of_a_call_is_finished_by_the_next_reconcile(step, where):
    call = dict(STEPS)[step]
    crashed_at = []
    for limit in range(1, 40):
        r = Region()
        _prepare(r, step)
        counter = [limit]
        if where == "cluster":
            cells = {c: CrashingWorkloads(w, counter) for c, w in r.cells.items()}
            service = a.Apps(r.store, r.rt, cells)
        else:
            service = a.Apps(CrashingStore(r.store, counter), r.rt, r.cells)
        before = r.activity()
        try:
            r.run(call(_with(r, service), "crash-1"))
        except Crash:
            crashed_at.append(limit)
        else:
            break  # the call got through without reaching the limit: every crash point was tried
        after = r.activity()
        # The activity record is in the intent's transaction: there, or not at all.
        assert after in (before, [*before, _ACTION[step]])
        restarted = a.Apps(r.store, r.rt, r.cells)  # a fresh control service on the same etcd and Cells
        done = r.run(restarted.reconcile_all())
        assert all(d.pending == {} for d in done)
        want = _expected(r)
        for cell in CELLS:
            assert r.controllers(cell) == want[cell], (step, where, limit, cell)
        apps = [a.decode_app(kv) for kv in r.server._range(a.APPS, True).kvs]
        for cell in CELLS:
            assert sorted(r.cells[cell].namespaces) == sorted(x.name for x in apps if cell in x.cells)
        if after != before:  # the change was recorded: it must be complete now
            _assert_done(r, step)
        assert r.run(recount(r.store)).equal
    assert crashed_at, "no crash point was reached"


_ACTION = {"create": "app.create", "deploy": "version.deploy", "scale": "app.scale",
           "delete_version": "version.delete", "delete_app": "app.delete"}


def _with(r: Region, service: a.Apps) -> Region:
    """``r`` with ``service`` as its apps service (the step lambdas call ``r.apps``)."""
    class View:
        apps = service
    return View()  # type: ignore[return-value]


def _assert_done(r: Region, step: str) -> None:
    if step == "create":
        assert r.controllers("cell-a") == {} and "shop" in r.cells["cell-b"].namespaces
    elif step == "deploy":
        assert r.controllers("cell-b") == {"shop-v1": spec("v1", 3), "shop-v2": spec("v2", 3, IMAGE2)}
    elif step == "scale":
        assert r.controllers("cell-a")["shop-v1"].replicas == 7 and r.controllers("cell-b")["shop-v1"].replicas == 3
    elif step == "delete_version":
        assert r.controllers("cell-a") == {} and r.server._range(a.VERSIONS, True).kvs == ()
    else:
        assert r.run(r.store.get(a.app_key("shop"))) is None and all(not w.namespaces for w in r.cells.values())


def test_an_etcd_failure_of_the_intent_writes_nothing_and_touches_no_cell():
    r = Region()
    r.create()
    r.deploy(FIRST)
    r.store.partition()
    for coro in (r.apps.deploy(ALICE, "shop", a.Draft(image=IMAGE2), request_id="e1"),
                 r.apps.scale(ALICE, "shop", "v1", 9, request_id="e2")):
        r.refused(StoreUnavailable, coro)
    r.store.heal()
    assert r.controllers("cell-a") == {"shop-v1": spec("v1", 3)}


def test_reconcile_deletes_orphan_controllers_and_leaves_foreign_ones():
    r = Region()
    r.create()
    r.deploy(FIRST)
    r.run(r.apps.delete_version(ALICE, "shop", "v1", request_id="d1"))
    r.deploy(a.Draft(image=IMAGE, replicas=2))  # v2
    # A stale applier put v1 back after its deletion; someone runs their own controller beside ours.
    r.run(r.cells["cell-a"].apply_controller(spec("v1", 3)))
    r.run(r.cells["cell-a"].apply_controller(ControllerSpec("shop", "v99", IMAGE, 1, 1, 1)))  # a number never given
    done = r.run(r.apps.reconcile("shop"))
    assert done.orphans == ("cell-a/shop-v1",)
    assert sorted(r.controllers("cell-a")) == ["shop-v2", "shop-v99"]


def test_corrupt_records_are_typed_errors_skipped_in_lists_and_left_alone_by_reconcile():
    r = Region()
    r.create()
    r.create(name="blog", cells=("cell-b", "cell-c"))
    r.deploy(FIRST)
    for raw in (b"not json", b"[" * 100000, json.dumps({"name": "other"}).encode()):
        r.run(r.store.put(a.app_key("blog"), raw))
        err = r.refused(port.CorruptRecord, r.apps.show(ADMIN, "blog"))
        assert "blog" in str(err)
        assert [x.name for x in r.run(r.apps.list_apps(ADMIN))] == ["shop"]
    r.run(r.store.put(a.version_key("shop", "v1"), b'{"app":"shop"}'))
    r.refused(port.CorruptRecord, r.apps.show(ALICE, "shop"))
    done = r.run(r.apps.reconcile("shop"))
    assert "corrupt" in done.pending["*"]
    assert r.controllers("cell-a") == {"shop-v1": spec("v1", 3)}  # nothing deleted on a guess


def test_the_sim_cells_report_each_apps_controllers_per_version_to_the_pod_emulation():
    r = Region()
    seen: list[tuple[str, str, dict[str, tuple[int, str]]]] = []
    for workloads in r.cells.values():
        workloads.on_change = lambda app, versions, cell=workloads.cluster.name: seen.append(
            (cell, app, dict(versions)))
    r.create()
    r.deploy(FIRST)
    r.deploy(a.Draft(image=IMAGE2, replicas=1))
    r.run(r.apps.delete_version(ALICE, "shop", "v1", request_id="d1"))
    assert seen == [("cell-a", "shop", {"v1": (3, IMAGE)}), ("cell-b", "shop", {"v1": (3, IMAGE)}),
                    ("cell-a", "shop", {"v1": (3, IMAGE), "v2": (1, IMAGE2)}),
                    ("cell-b", "shop", {"v1": (3, IMAGE), "v2": (1, IMAGE2)}),
                    ("cell-a", "shop", {"v2": (1, IMAGE2)}), ("cell-b", "shop", {"v2": (1, IMAGE2)})]
