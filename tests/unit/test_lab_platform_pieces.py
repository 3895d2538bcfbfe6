"""The lab's platform pieces that need no lab: the bad pods' CGI and its validation, the replication
controllers' reading of a controller, the load generator's version of a failed answer, the platform
checks' verdicts over observed data, and the bench's step windows."""

from __future__ import annotations

import math

import pytest

from bench.release import failed_in, revert_seconds, step_windows
from control.activity import Recount
from lab.checks import judge
from lab.container_runtime import RuntimeError_, check_error_rate, check_version, error_script
from lab.load import version_of
from lab.observe import Observations
from lab.platform import Observed
from lab.replication import owns, template_of
from sim.checks import Final
from sim.spec import CheckSpec


@pytest.mark.parametrize("value", ["1; rm -rf /", "0.5 ", -0.1, 1.5, True, math.nan, "nan", "2", [], {}])
def test_a_hostile_error_rate_is_refused(value):
    with pytest.raises(RuntimeError_):
        check_error_rate(value)


def test_error_rates_and_the_cgi_carry_only_numbers():
    assert check_error_rate("0.2") == 0.2 and check_error_rate(1) == 1.0 and check_error_rate(None) == 0.0
    script = error_script("/usr/bin/busybox", 0.25)
    assert script.startswith("#!/usr/bin/busybox sh\n") and '-lt 8192 ]' in script
    assert '"$LEENGINE_POD"' in script and "Content-Length" in script


@pytest.mark.parametrize("value", ["v0", "v1;x", "1", "v", "V1", 3, "v1234567890"])
def test_a_bad_version_label_is_refused(value):
    with pytest.raises(RuntimeError_):
        check_version(value)


def _rc(labels, port=8080, env=()):
    return {"metadata": {"namespace": "shop", "name": "shop-v2"},
            "spec": {"replicas": 2, "selector": dict(labels),
                     "template": {"metadata": {"labels": dict(labels)},
                                  "spec": {"containers": [{"name": "app", "image": "x", "ports": [
                                      {"containerPort": port}], "env": list(env)}]}}}}


def test_a_controller_template_gives_app_version_port_and_error_rate():
    rc = _rc({"app": "shop", "version": "v2"}, env=[{"name": "LEENGINE_ERROR_RATE", "value": "0.2"}])
    t = template_of(rc)
    assert (t.app, t.version, t.port, t.error_rate) == ("shop", "v2", 8080, 0.2)
    assert template_of(_rc({"app": "shop"})) is None  # not a platform version's
    assert template_of(_rc({"app": "shop", "version": "v2"},
                           env=[{"name": "LEENGINE_ERROR_RATE", "value": "$(reboot)"}])) is None
    pod = {"metadata": {"namespace": "shop", "name": "shop-v2-bcdfg", "labels": {"app": "shop", "version": "v2"}}}
    assert owns(rc, pod)
    assert not owns(rc, {"metadata": {**pod["metadata"], "labels": {"app": "shop", "version": "v1"}}})
    assert not owns(rc, {"metadata": {**pod["metadata"], "namespace": "other"}})


def test_the_version_of_a_failed_answer_comes_from_the_pod_name():
    assert version_of("shop", "shop-v12-bcd2f") == "v12"
    assert version_of("shop", "shop-c1-3") == "" and version_of("shop", "blog-v1-bcdfg") == ""


def _obs(**platform):
    observed = Observed(**platform)
    return Observations(duration=300, faults_end=0, platform=observed, platform_cells={"shop": ("c1", "c2")},
                        release_apps=["shop"])


def test_release_reverted_within_from_first_error_to_share_zero_and_controllers_gone():
    obs = _obs(shares={"shop": [(70.0, {"v1": 99, "v2": 1}), (85.0, {"v1": 100, "v2": 0})]},
               controllers_gone={("shop", "c1", "shop-v2"): 86.0, ("shop", "c2", "shop-v2"): 90.0})
    obs.first_error = {("shop", "v2"): 72.0}
    assert judge(obs, CheckSpec("release-reverted-within", within=20)).passed  # 90 - 72 = 18 s
    assert not judge(obs, CheckSpec("release-reverted-within", within=10)).passed
    del obs.platform.controllers_gone[("shop", "c2", "shop-v2")]
    verdict = judge(obs, CheckSpec("release-reverted-within", within=60))
    assert not verdict.passed and "controllers still in c2" in verdict.detail
    obs.first_error = {}
    assert not judge(obs, CheckSpec("release-reverted-within", within=60)).passed


def test_release_completed_and_no_orphans_from_the_final_look():
    final = Final(295.0, {"shop": {"v2"}}, {"shop": set()}, {("shop", "c1"): {"shop-v2"}, ("shop", "c2"): {"shop-v2"}},
                  Recount({}, {}, 0, ()))
    marks = [(60.0, "running", 1, "v2"), (90.0, "running", 10, "v2"), (100.0, "paused", 10, "v2"),
             (130.0, "running", 10, "v2"), (200.0, "completed", 100, "v2")]
    obs = _obs(releases={"shop": marks}, final=final)
    obs.outages = [(95.0, 140.0)]
    assert judge(obs, CheckSpec("release-completed")).passed
    assert judge(obs, CheckSpec("no-orphan-versions")).passed
    obs.platform.releases["shop"] = [m for m in marks if m[1] != "paused"]
    assert "never paused" in judge(obs, CheckSpec("release-completed")).detail
    final.controllers[("shop", "c2")] = {"shop-v1", "shop-v2"}
    assert not judge(obs, CheckSpec("no-orphan-versions")).passed


def test_the_lab_fills_the_sims_platform_seen_with_controllers_keyed_by_version():
    obs = _obs(controllers_gone={("shop", "c1", "shop-v2"): 86.0}, shares={"shop": [(70.0, None)]})
    obs.first_error = {("shop", "v2"): 72.0, ("blog", "v3"): 80.0}
    seen = obs.platform.seen(obs.platform_cells, obs.first_error)
    assert seen.controllers_gone == {("shop", "v2", "c1"): 86.0}
    assert seen.cells == {"shop": ("c1", "c2"), "blog": ()} and seen.first_error == obs.first_error


def test_activity_consistent_needs_the_whole_history_and_the_recount():
    final = Final(295.0, {"shop": {"v1"}}, {"shop": set()}, {}, Recount({}, {}, 0, ()))
    obs = _obs(final=final, history_complete=True)
    assert judge(obs, CheckSpec("activity-consistent")).passed
    obs.platform.history_complete = False
    verdict = judge(obs, CheckSpec("activity-consistent"))
    assert not verdict.passed and "not read to its end (0 events)" in verdict.detail
    obs.platform.history_complete, obs.platform.final = True, None
    verdict = judge(obs, CheckSpec("activity-consistent"))
    assert not verdict.passed and "no recount at the end" in verdict.detail
    obs.platform = None
    assert judge(obs, CheckSpec("activity-consistent")).detail == "no platform app in this lab run"


def test_the_bench_cuts_a_release_into_steps_and_measures_a_revert():
    marks = [[60.0, "running", 1, "v2"], [75.0, "running", 1, "v2"], [90.0, "running", 10, "v2"],
             [120.0, "running", 50, "v2"], [150.0, "running", 100, "v2"], [180.0, "completing", 100, "v2"],
             [181.0, "completed", 100, "v2"]]
    windows = step_windows(marks, "v2", 300.0)
    assert [(p, a, b) for p, a, b, _ in windows] == [(1, 60.0, 90.0), (10, 90.0, 120.0), (50, 120.0, 150.0),
                                                     (100, 150.0, 181.0)]
    assert windows[-1][3] == "completed"
    assert failed_in({59: (10, 1), 60: (10, 2), 89: (10, 3), 90: (10, 4)}, 60.0, 90.0) == 5
    assert revert_seconds(72.0, [[70.0, {"v2": 1}], [85.0, {"v2": 0}]], [86.0, 90.0], "v2") == 18.0
    assert revert_seconds(72.0, [[70.0, {"v2": 1}]], [86.0, 90.0], "v2") is None
