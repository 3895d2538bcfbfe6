"""Build task records, placement by rendezvous hash, and the real builder's input checks (no root, no buildah)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from foundation.adapters.buildah_builder import BuildahBuilder, BuildahConfig
from foundation.logic.build_task import Result, Task, TaskError, rank_hosts
from foundation.ports.builder import BuildFailed, BuildRequest


def test_rendezvous_moves_only_the_repos_of_a_host_that_leaves():
    hosts = [f"build-{i}" for i in range(1, 6)]
    repos = [f"team/app-{i}" for i in range(300)]
    before = {r: rank_hosts(r, hosts)[0] for r in repos}
    assert rank_hosts("team/app-1", hosts) == rank_hosts("team/app-1", list(reversed(hosts)))  # order-free
    assert len(set(before.values())) == 5  # every host gets some
    after = {r: rank_hosts(r, [h for h in hosts if h != "build-3"])[0] for r in repos}
    moved = {r for r in repos if before[r] != after[r]}
    assert moved == {r for r in repos if before[r] == "build-3"}  # only the leaver's repos move ...
    assert all(after[r] == rank_hosts(r, hosts)[1] for r in moved)  # ... each to its second choice


@pytest.mark.parametrize("data, field", [
    ({"app": "Shop", "commit": "v1"}, "app"),
    ({"app": "shop", "commit": "-x"}, "commit"),
    ({"app": "shop", "commit": "v1 --upload-pack=evil"}, "commit"),
    ({"app": "shop", "commit": "v1", "repo": "a/../../etc"}, "repo"),
    ({"app": "shop", "commit": "v1", "state": "done"}, "state"),
    ({"app": "shop", "commit": "v1", "attempt": 0}, "attempt"),
    ([], "task"),
])
def test_a_bad_task_names_its_field(data, field):
    with pytest.raises(TaskError) as info:
        Task.parse(data)
    assert info.value.field == field


def test_records_round_trip():
    task = Task("shop", "team/shop", "v1", 12.5, 2, "running", 13.0)
    assert Task.from_bytes(task.to_bytes()) == task and task.id == "shop@v1"
    result = Result("shop@v1", "done", "build-1", 2, "r:5000/shop:v1", (("clone", 1.5),), True, "", 12.5, 99.0,
                    ("clone: 1.50s",))
    assert Result.from_bytes(result.to_bytes()) == result


@pytest.mark.parametrize("request_, words", [
    (BuildRequest("shop", "../outside", "v1"), "not a plain name"),
    (BuildRequest("shop", "shop", "--upload-pack=x"), "not a plain name"),
    (BuildRequest("Shop", "shop", "v1"), "not a plain name"),
    (BuildRequest("shop", "missing", "v1"), "no repository"),
])
def test_the_real_builder_refuses_bad_inputs_before_running_anything(tmp_path: Path, request_, words):
    (tmp_path / "repos" / "shop").mkdir(parents=True)
    builder = BuildahBuilder(BuildahConfig("build-1", tmp_path / "repos", tmp_path / "work", "127.0.0.1:5000"))
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(request_, lambda _: None))
    assert info.value.step == "clone" and words in str(info.value)
    assert not (tmp_path / "work" / "src").exists()  # nothing was checked out
