"""Gray releases (control/releases.py) and apps' traffic shares, on the sim Store, sim Cells and sim time.

A Region of two Cells (``SimWorkloads`` over ``SimCluster``), the apps service and the
release controller over one ``MemoryStore``, a fake ``TrafficShares`` (what slb-core would
hold) and a feeder that plays two Nginx hosts: every second each host adds requests to
its cumulative counts per version in proportion to the shares, with each version's error
rate and latency, and writes its traffic record (``foundation.logic.slb_traffic``) straight
into the store, as the SLB agents do. Assertions read the shares written, the Cells'
controllers, the release record and the activity records.
"""

from __future__ import annotations

import pytest

from control import apps as a
from control import releases as rel
from control.activity import ACTIVITY, decode
from control.auth import Principal
from control.members import Membership, Resource, Role
from foundation.logic.slb_traffic import HostTraffic, VersionCounts, encode_traffic, traffic_key
from foundation.ports import KeyValue
from foundation.ports import control as port
from sim.adapters.cluster import SimCluster
from sim.adapters.runtime import SimRuntime
from sim.adapters.store import MemoryStore
from sim.adapters.workloads import SimWorkloads

ALICE = Principal("alice", "user")
IMAGE = "registry.local:5000/shop:" + "a" * 40
IMAGE2 = "registry.local:5000/shop:" + "b" * 40
CELLS = ("cell-a", "cell-b")
GROUP, DOMAIN = "web", "shop.example.com"
HOSTS = ("nginx-1", "nginx-2")
FAST = {"steps": (1, 10, 50, 100), "bake_seconds": 10.0, "check_seconds": 2.0, "bad_checks": 3,
        "min_requests": 5, "max_error_increase": 0.05, "max_latency_ratio": 2.0}


class FakeShares:
    """slb-core's shares records, in memory; ``history`` is every write in order."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, int]] = {}
        self.history: list[dict[str, int]] = []
        self.fail = False

    async def set_shares(self, group, domain, shares) -> None:
        if self.fail:
            raise port.Unavailable("slb-core away")
        assert sum(shares.values()) == 100 and all(0 <= s <= 100 for s in shares.values())
        self.records[(group, domain)] = dict(shares)
        self.history.append(dict(shares))

    async def get_shares(self, group, domain):
        found = self.records.get((group, domain))
        return dict(found) if found is not None else None


class Region:
    def __init__(self, production: bool = True) -> None:
        self.rt = SimRuntime(seed=1)
        self.server = MemoryStore(self.rt)
        self.store = self.server.client("control", latency=0.001)
        self.clusters = {c: SimCluster(c, self.rt) for c in CELLS}
        self.cells = {c: SimWorkloads(self.clusters[c], runtime=self.rt, latency=0.001) for c in CELLS}
        self.shares = FakeShares()
        self.apps = a.Apps(self.store, self.rt, self.cells, shares=self.shares)
        self.releases = rel.Releases(self.store, self.rt, self.apps, self.shares, self.cells)
        self.error_rate = {"v1": 0.0, "v2": 0.0}
        self.latency = {"v1": 0.010, "v2": 0.010}
        self.counts = {h: {"v1": [0, 0, 0.0], "v2": [0, 0, 0.0]} for h in HOSTS}
        self.epoch = dict.fromkeys(HOSTS, 0)
        self.ids = 0
        self.run(self.apps.create_app(ALICE, "shop", list(CELLS), production=production, group=GROUP,
                                      domain=DOMAIN, request_id=self.rid()))
        self.run(self.apps.deploy(ALICE, "shop", a.Draft(image=IMAGE, replicas=2), request_id=self.rid()))
        self.run(self.apps.deploy(ALICE, "shop", a.Draft(image=IMAGE2), request_id=self.rid()))
        self.loop = None
        self.feeder = self.rt.spawn(self.feed(), name="feeder")

    def run(self, coro):
        return self.rt.run_until_complete(coro)

    def rid(self) -> str:
        self.ids += 1
        return f"req-{self.ids}"

    async def feed(self) -> None:
        """Two Nginx hosts, 100 requests a second each, split by the shares."""
        while True:
            await self.rt.sleep(1.0)
            shares = self.shares.records.get((GROUP, DOMAIN), {})
            for host in HOSTS:
                for version in ("v1", "v2"):
                    n = shares.get(version, 0)
                    c = self.counts[host][version]
                    c[0] += n
                    c[1] += round(n * self.error_rate[version])
                    c[2] += n * self.latency[version]
                record = HostTraffic(host, self.epoch[host], self.rt.now(), {DOMAIN: {
                    v: VersionCounts(c[0], c[1], c[2]) for v, c in self.counts[host].items()}})
                await self.store.put(traffic_key(GROUP, host), encode_traffic(record))

    def start_loop(self) -> None:
        self.loop = self.rt.spawn(self.releases.run(), name="releases")

    def release(self, **kw):
        return self.run(self.releases.start(ALICE, "shop", "v2", request_id=self.rid(), **{**FAST, **kw}))

    def record(self) -> rel.Release:
        return rel.decode_release(self.server._range(rel.release_key("shop"), False).kvs[0])

    def until(self, predicate, limit: float = 300.0) -> float:
        """Advance sim time a second at a time until ``predicate()``; the time it took."""
        start = self.rt.now()
        while not predicate():
            assert self.rt.now() - start < limit, f"not reached in {limit} s: {self.record()}"
            self.rt.run(until=self.rt.now() + 1.0)
        return self.rt.now() - start

    def controllers(self, cell: str) -> list[str]:
        return sorted(name for (_, name) in self.cells[cell].controllers)

    def activity(self) -> list[tuple[str, str, int]]:
        kvs = self.server._range(f"{ACTIVITY}app/shop/", True).kvs
        return [(decode(kv).action, decode(kv).who, kv.mod_revision) for kv in reversed(kvs)]


def test_apps_with_a_domain_serve_released_versions_only():
    r = Region()
    # v1 first: 100; v2 deployed later runs with share 0 (set by the deploy's reconcile).
    assert r.shares.history == [{"v1": 100}, {"v1": 100, "v2": 0}]
    assert r.controllers("cell-a") == ["shop-v1", "shop-v2"]
    r.shares.records.clear()  # lost: the reconcile writes the rule again
    r.run(r.apps.reconcile("shop"))
    assert r.shares.records[(GROUP, DOMAIN)] == {"v1": 100, "v2": 0}
    r.shares.records[(GROUP, DOMAIN)] = {"v1": 100, "v9": 0}  # a version unknown: dropped, v2 back at 0
    r.run(r.apps.reconcile("shop"))
    assert r.shares.records[(GROUP, DOMAIN)] == {"v1": 100, "v2": 0}
    r.run(r.apps.delete_version(ALICE, "shop", "v1", request_id=r.rid()))  # its share goes to the one left
    assert r.shares.records[(GROUP, DOMAIN)] == {"v2": 100}
    r.shares.fail = True  # slb-core away: the call still succeeds, the next reconcile repairs
    view = r.run(r.apps.deploy(ALICE, "shop", a.Draft(image=IMAGE), request_id=r.rid()))
    assert [v.version.name for v in view.versions] == ["v2", "v3"]
    r.shares.fail = False
    r.run(r.apps.reconcile("shop"))
    assert r.shares.records[(GROUP, DOMAIN)] == {"v2": 100, "v3": 0}


def test_one_app_per_domain_and_the_domain_is_free_again_once_its_app_is_gone():
    # Two apps on one domain rewrote each other's shares at every reconcile (each dropped the other's
    # versions) and a release of one was undone by the other's reconcile.
    r = Region()
    before = len(r.server._range("/platform/", True).kvs)
    with pytest.raises(port.AlreadyExists, match="already serves app shop"):
        r.run(r.apps.create_app(ALICE, "shop2", list(CELLS), group=GROUP, domain=DOMAIN, request_id=r.rid()))
    assert len(r.server._range("/platform/", True).kvs) == before  # nothing written, no activity record
    for version in ("v1", "v2"):
        r.run(r.apps.delete_version(ALICE, "shop", version, request_id=r.rid()))
    r.run(r.apps.delete_app(ALICE, "shop", request_id=r.rid()))
    assert not r.server._range(a.domain_claim_key(GROUP, DOMAIN), False).kvs
    view = r.run(r.apps.create_app(ALICE, "shop2", list(CELLS), group=GROUP, domain=DOMAIN, request_id=r.rid()))
    assert view.app.domain == DOMAIN
    assert r.server._range(a.domain_claim_key(GROUP, DOMAIN), False).kvs[0].value == b"shop2"


def test_a_good_version_steps_up_after_each_bake_and_completion_deletes_the_old_one():
    r = Region()
    r.start_loop()
    view = r.release()
    assert view.release.state == "running" and view.release.old == "v1" and view.release.percent == 1
    assert r.shares.records[(GROUP, DOMAIN)] == {"v1": 99, "v2": 1}
    took = r.until(lambda: r.record().state == "completed")
    steps = [s for s in r.shares.history[2:]]
    assert steps == [{"v1": 99, "v2": 1}, {"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v1": 0, "v2": 100},
                     {"v2": 100}]
    assert 4 * 10 <= took <= 4 * 10 + 4 * 2 + 2  # four bakes, each ending at a check
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v2"]  # the old version is gone in every Cell
    actions = [(x, who) for x, who, _ in r.activity()][3:]
    assert actions == [("release.start", "alice"), ("release.step", "release-controller"),
                       ("release.step", "release-controller"), ("release.step", "release-controller"),
                       ("release.complete", "release-controller"), ("version.delete", "release-controller"),
                       ("release.complete", "release-controller")]
    assert r.record().checks >= 16 and r.record().bad == 0


def test_releasing_the_version_that_serves_everything_is_refused_and_moves_no_traffic():
    # After v2's release completed (v1 deleted), v3 is deployed at share 0. "Release v2" again took v3,
    # the other active version, as the one to move traffic from: its 1 % step sent 99 % to unreleased v3.
    r = Region()
    r.start_loop()
    r.release(steps=(100,), bake_seconds=2.0)
    r.until(lambda: r.record().state == "completed")
    r.run(r.apps.deploy(ALICE, "shop", a.Draft(image=IMAGE), request_id=r.rid()))
    assert r.shares.records[(GROUP, DOMAIN)] == {"v2": 100, "v3": 0}
    with pytest.raises(port.FailedPrecondition, match="v2 already serves"):
        r.release()
    assert r.shares.records[(GROUP, DOMAIN)] == {"v2": 100, "v3": 0}
    assert r.record().state == "completed" and r.record().new == "v2"  # the last release, untouched


def test_a_bad_version_is_reverted_after_bad_checks_intervals_in_every_cell():
    r = Region()
    r.error_rate["v2"] = 0.5
    r.start_loop()
    r.release(steps=(10, 50, 100))
    took = r.until(lambda: r.record().state == "reverted")
    # the first reading is the baseline taken at start; then three bad intervals of 2 s
    assert took <= (FAST["bad_checks"] + 1) * FAST["check_seconds"] + 1
    assert r.record().reason.startswith("3 bad intervals at 10%")
    assert r.record().interval["new"][1] * 2 >= r.record().interval["new"][0] * 0.9
    assert r.shares.records[(GROUP, DOMAIN)] == {"v1": 100}
    assert {"v1": 90, "v2": 10} in r.shares.history and {"v1": 50, "v2": 50} not in r.shares.history
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v1"]
    r.rt.run(until=r.rt.now() + 20)
    assert r.record().state == "reverted"  # stays
    with pytest.raises(port.NotFound):
        r.run(r.apps.delete_version(ALICE, "shop", "v2", request_id=r.rid()))


def test_a_step_whose_last_interval_was_bad_does_not_move_on_and_a_failing_version_never_completes():
    # v2 starts failing two checks before the 100 % step's bake ends: the bake ends with 2 bad
    # intervals in a row (of 3). Completing then deleted v1 (no way back); the step now holds
    # until a good interval or the third bad one, which reverts.
    r = Region()
    r.start_loop()
    r.release(steps=(50, 100))
    r.until(lambda: r.record().percent == 100 and r.record().baked >= FAST["bake_seconds"] - 2 * FAST[
        "check_seconds"] - 1e-9)
    r.error_rate["v2"] = 0.5
    r.until(lambda: r.record().state in ("reverted", "completed"))
    assert r.record().state == "reverted" and r.record().reason.startswith("3 bad intervals at 100%")
    assert r.shares.records[(GROUP, DOMAIN)] == {"v1": 100}
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v1"]


def test_slow_is_bad_too_and_too_few_requests_decide_nothing():
    policy = rel.Policy(**FAST).check()
    assert rel.verdict(policy, {"old": (100, 0, 1.0), "new": (10, 0, 0.3)})[0] is True  # 30 ms vs 10 ms
    assert rel.verdict(policy, {"old": (100, 0, 1.0), "new": (10, 0, 0.15)})[0] is False
    assert rel.verdict(policy, {"old": (100, 0, 1.0), "new": (4, 4, 4.0)})[0] is None
    assert rel.verdict(policy, {"old": (0, 0, 0.0), "new": (10, 0, 9.0)})[0] is False  # no old to compare to
    # a host restarted (epoch moved, counts lower): its delta is its new value
    base = {"h": rel.HostMark(0, (100, 1, 1.0), (50, 0, 0.5))}
    assert rel.measure(base, {"h": rel.HostMark(1, (10, 0, 0.1), (5, 0, 0.05))}) == {
        "old": (10, 0, 0.1), "new": (5, 0, 0.05)}
    assert rel.measure(base, {"h": rel.HostMark(0, (150, 1, 1.5), (60, 0, 0.6))})["new"] == (10, 0, 0.09999999999999998)


def test_a_dark_cell_pauses_the_release_and_it_resumes_and_completes():
    r = Region()
    r.start_loop()
    r.release()
    r.until(lambda: r.record().percent == 10)
    r.clusters["cell-b"].cut_off()
    r.until(lambda: r.record().state == "paused")
    paused_at = len(r.shares.history)
    r.rt.run(until=r.rt.now() + 60)  # far longer than a bake: no step while paused
    assert r.record().state == "paused" and r.record().percent == 10 and len(r.shares.history) == paused_at
    r.clusters["cell-b"].reconnect()
    r.until(lambda: r.record().state == "running")
    resumed = r.rt.now()
    assert r.record().baked == 0.0 and "bakes again" in r.record().reason
    r.until(lambda: r.record().percent == 50)
    assert r.rt.now() - resumed >= FAST["bake_seconds"]  # the step's bake started over
    r.until(lambda: r.record().state == "completed")
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v2"]
    assert [x for x, _, _ in r.activity()].count("release.pause") == 1
    assert [x for x, _, _ in r.activity()].count("release.resume") == 1


def test_a_step_that_loses_its_race_to_a_revert_does_not_send_traffic_back_to_the_reverted_version():
    r = Region()
    r.start_loop()
    r.release()
    other = rel.Releases(r.store, r.rt, r.apps, r.shares, r.cells)  # a user's call served beside the loop
    write, raced = r.releases._write, []

    async def racing(release, compares, who, action, result, request_id):
        if action == "release.step" and not raced:  # the revert lands just before the step's CAS
            raced.append((await other.revert(ALICE, "shop", request_id="undo-race")).release.state)
        return await write(release, compares, who, action, result, request_id)

    r.releases._write = racing
    r.until(lambda: bool(raced))
    r.rt.run(until=r.rt.now() + 5)
    assert raced == ["reverted"] and r.record().state == "reverted"
    assert r.shares.records[(GROUP, DOMAIN)] == {"v1": 100}  # not the lost step's {v1: 90, v2: 10}
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v1"]


def test_a_restarted_controller_picks_the_release_up_at_its_recorded_step():
    r = Region()
    r.start_loop()
    r.release()
    r.until(lambda: r.record().percent == 50 and r.record().baked >= 4)
    r.loop.cancel()  # the control service dies
    r.rt.run(until=r.rt.now() + 30)
    before = r.record()
    assert before.percent == 50 and before.state == "running"
    r.releases = rel.Releases(r.store, r.rt, a.Apps(r.store, r.rt, r.cells, shares=r.shares), r.shares, r.cells)
    history = len(r.shares.history)
    r.start_loop()
    r.until(lambda: r.record().state == "completed")
    after_restart = r.shares.history[history:]
    assert after_restart[0] == {"v1": 0, "v2": 100}  # on from 50 %, never back to 1 or 10
    assert r.record().checks > before.checks
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v2"]


def test_every_transition_has_its_activity_record_in_the_same_transaction():
    r = Region()
    r.start_loop()
    r.release()
    r.until(lambda: r.record().percent == 10)
    view = r.run(r.releases.revert(ALICE, "shop", request_id="undo-1"))
    assert view.release.state == "reverted" and view.release.reason == "reverted by alice"
    records = {kv.mod_revision: decode(kv) for kv in r.server._range(f"{ACTIVITY}app/shop/", True).kvs}
    release_writes = [rev for rev, rec in records.items() if rec.action.startswith("release.")]
    assert [records[rev].action for rev in sorted(release_writes)] == [
        "release.start", "release.step", "release.revert", "release.revert"]
    assert records[sorted(release_writes)[2]].who == "alice" and records[sorted(release_writes)[2]].request_id \
        == "undo-1"
    # each of those revisions wrote the release record too: read at that revision, the record was changed by it
    for rev in release_writes:
        then = r.run(r.store.range(rel.release_key("shop"), revision=rev)).kvs
        assert then and then[0].mod_revision == rev, records[rev]
    assert r.record().revision == max(release_writes)
    for cell in CELLS:
        assert r.controllers(cell) == ["shop-v1"]


def test_rights_and_refusals_write_nothing():
    r = Region(production=True)
    for user, role in (("dev", "developer"), ("gus", "guest"), ("max", "master")):
        m = Membership(Resource("app", "shop"), user, Role.parse(role), "ops", 1.7e9)
        r.run(r.store.put(m.key, m.to_bytes()))
    before = r.server._range("/platform/", True).kvs
    with pytest.raises(port.PermissionDenied):
        r.run(r.releases.start(Principal("dev", "user"), "shop", "v2", request_id="x"))
    with pytest.raises(port.NotFound):
        r.run(r.releases.start(Principal("eve", "user"), "shop", "v2", request_id="x"))
    with pytest.raises(port.InvalidArgument) as bad:
        r.run(r.releases.start(ALICE, "shop", "v2", steps=(10, 5, 100), request_id="x"))
    assert bad.value.field == "steps"
    with pytest.raises(port.InvalidArgument) as bad:
        r.run(r.releases.start(ALICE, "shop", "v2", bad_checks=0, request_id="x"))
    assert bad.value.field == "bad_checks"
    with pytest.raises(port.NotFound):
        r.run(r.releases.start(ALICE, "shop", "v7", request_id="x"))
    assert r.server._range("/platform/", True).kvs == before
    view = r.run(r.releases.start(Principal("max", "user"), "shop", "v2", request_id="x"))
    assert view.release.started_by == "max"
    with pytest.raises(port.FailedPrecondition):  # one release per app at a time
        r.run(r.releases.start(ALICE, "shop", "v2", request_id="y"))
    with pytest.raises(port.PermissionDenied):
        r.run(r.releases.revert(Principal("gus", "user"), "shop", request_id="z"))
    # non-production: a Developer may release
    r2 = Region(production=False)
    m = Membership(Resource("app", "shop"), "dev", Role.DEVELOPER, "ops", 1.7e9)
    r2.run(r2.store.put(m.key, m.to_bytes()))
    assert r2.run(r2.releases.start(Principal("dev", "user"), "shop", "v2", request_id="x")).release.percent == 1


def test_an_app_without_a_domain_has_no_release():
    r = Region()
    r.run(r.apps.create_app(ALICE, "plain", list(CELLS), request_id="p1"))
    r.run(r.apps.deploy(ALICE, "plain", a.Draft(image=IMAGE, replicas=1), request_id="p2"))
    r.run(r.apps.deploy(ALICE, "plain", a.Draft(image=IMAGE2), request_id="p3"))
    with pytest.raises(port.FailedPrecondition):
        r.run(r.releases.start(ALICE, "plain", "v2", request_id="p4"))


@pytest.mark.parametrize("value", [
    b"", b"{", b"[]", b'{"app": "shop"}', b"\xff" * 10, b'{"a":' * 5000,
])
def test_hostile_release_and_traffic_records_never_crash_the_loop(value):
    r = Region()
    r.start_loop()
    r.release(steps=(50, 100), bake_seconds=4.0)
    r.run(r.store.put(rel.release_key("evil"), value))
    r.run(r.store.put(traffic_key(GROUP, "nginx-9"), value))
    good = r.record()
    forged = good.to_bytes().replace(b'"state":"running"', b'"state":"exploded"')
    r.run(r.store.put(rel.release_key("other"), forged))
    assert r.run(r.releases.check("evil")) is None
    r.until(lambda: r.record().state == "completed")
    assert not r.loop.done()
    with pytest.raises(rel.InvalidRelease):
        rel.decode_release(r.server._range(rel.release_key("other"), False).kvs[0])


@pytest.mark.parametrize("before, after", [
    (VersionCounts(5000, 0, 0.0), VersionCounts(5001, 5001, 0.0)),  # errors rose by more than the requests
    (VersionCounts(0, 0, 0.0), VersionCounts(2**53, 2**53, 1e300)),  # counts and seconds at their bounds
])
def test_decodable_but_hostile_traffic_records_never_make_the_release_record_unreadable(before, after):
    # Each traffic record decodes, but the interval measured from them (errors above requests, sums over
    # hosts past 2**53, seconds past the record's bound) once made a release record its own decoder
    # refused: the loop skipped it for good and a revert failed with CorruptRecord.
    r = Region()
    r.start_loop()
    r.release(steps=(50, 100), bake_seconds=4.0)
    for host in ("nginx-8", "nginx-9"):
        r.run(r.store.put(traffic_key(GROUP, host), encode_traffic(HostTraffic(host, 0, 0.0, {DOMAIN: {
            "v1": before, "v2": before}}))))
    r.rt.run(until=r.rt.now() + 3)
    for host in ("nginx-8", "nginx-9"):
        r.run(r.store.put(traffic_key(GROUP, host), encode_traffic(HostTraffic(host, 0, 0.0, {DOMAIN: {
            "v1": after, "v2": after}}))))
    r.rt.run(until=r.rt.now() + 3)
    record = r.record()  # decodes
    for side in ("old", "new"):
        requests, errors, _ = record.interval[side]
        assert errors <= requests <= 2**53
    view = r.run(r.releases.revert(ALICE, "shop", request_id=r.rid()))
    assert view.release.state in ("reverted", "completed")


def test_a_baseline_of_the_most_hosts_with_the_longest_names_fits_the_record():
    mark = rel.HostMark(2**53, (2**53, 2**53, 1e15 / 3), (2**53, 2**53, 1e15 / 3))
    hosts = {f"h{i:04d}" + "a" * 248: mark for i in range(rel.MAX_HOSTS)}
    release = rel.Release("a" * 40, "v1", "v2", GROUP, DOMAIN, rel.Policy().check(), "running", 0, 0.0, 0, 0, hosts,
                          {}, "started by alice", "alice", 1.0)
    kv = KeyValue(release.key, release.to_bytes(), 1, 1, 1, 0)
    assert rel.decode_release(kv).baseline == hosts


def test_the_record_round_trips_and_its_decoder_checks_bounds():
    r = Region()
    r.release()
    got = r.record()
    kv = r.server._range(rel.release_key("shop"), False).kvs[0]
    assert rel.decode_release(kv) == got and got.to_bytes() == kv.value
    for bad in (b'"step":0', b'"bad":0'):
        assert bad in kv.value
    for old, new in ((b'"step":0', b'"step":9'), (b'"bad":0', b'"bad":-1'), (b'"old":"v1"', b'"old":"v2"'),
                     (b'"old":"v1"', b'"old":"../x"'), (b'"baked":0.0', b'"baked":NaN'),
                     (b'"started_by":"alice"', b'"started_by":"Al ice"')):
        forged = type(kv)(kv.key, kv.value.replace(old, new), kv.create_revision, kv.mod_revision, kv.version,
                          kv.lease)
        with pytest.raises(rel.InvalidRelease):
            rel.decode_release(forged)


def test_a_corrupt_release_record_is_replaced_by_the_next_start_and_get_reports_it():
    r = Region()
    r.run(r.store.put(rel.release_key("shop"), b'{"state": "running"'))
    with pytest.raises(port.CorruptRecord):
        r.run(r.releases.get(ALICE, "shop"))
    assert r.run(r.releases.check("shop")) is None  # the loop leaves it alone
    view = r.release()
    assert view.release.state == "running" and r.record().new == "v2"
    assert r.run(r.releases.get(ALICE, "shop")).release == r.record()
