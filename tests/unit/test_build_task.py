"""Build task records, placement by rendezvous hash, and the real builder's input checks (no root, no buildah)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation.adapters.buildah_builder import NOBODY, BuildahBuilder, BuildahConfig, _stage_out
from foundation.logic.build_task import Result, Task, TaskError, rank_hosts
from foundation.ports.builder import BuildFailed, BuildRequest

AS_ROOT = os.geteuid() == 0
# The builder's user owns what a build made; as root the tests give their trees to it as the builder does.
BUILD_USER = NOBODY if AS_ROOT else os.geteuid()

C1 = "3f2a9c0d1e4b5a6978877665544332211009988a"  # full commit ids: the only commits a task names
C2 = "0123456789abcdef0123456789abcdef01234567"


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
    ({"app": "Shop", "commit": C1}, "app"),
    ({"app": "shop", "commit": "-x"}, "commit"),
    ({"app": "shop", "commit": "v1 --upload-pack=evil"}, "commit"),
    ({"app": "shop", "commit": C1, "repo": "a/../../etc"}, "repo"),
    ({"app": "shop", "commit": C1, "state": "done"}, "state"),
    ({"app": "shop", "commit": C1, "attempt": 0}, "attempt"),
    ([], "task"),
])
def test_a_bad_task_names_its_field(data, field):
    with pytest.raises(TaskError) as info:
        Task.parse(data)
    assert info.value.field == field


def test_records_round_trip():
    task = Task("shop", "team/shop", C1, 12.5, 2, "running", 13.0)
    assert Task.from_bytes(task.to_bytes()) == task and task.id == f"shop@{C1}"
    result = Result(f"shop@{C1}", "done", "build-1", 2, f"r:5000/shop:{C1}", (("clone", 1.5),), True, "", 12.5,
                    99.0, ("clone: 1.50s",))
    assert Result.from_bytes(result.to_bytes()) == result


@pytest.mark.parametrize("request_, words", [
    (BuildRequest("shop", "../outside", C1), "not a plain name"),
    (BuildRequest("shop", "shop", "--upload-pack=x"), "not a plain name"),
    (BuildRequest("Shop", "shop", C1), "not a plain name"),
    (BuildRequest("shop", "missing", C1), "no repository"),
    (BuildRequest("shop", "shop", "HEAD"), "not a plain name"),
    (BuildRequest("shop", "shop", "main"), "not a plain name"),
])
def test_the_real_builder_refuses_bad_inputs_before_running_anything(tmp_path: Path, request_, words):
    (tmp_path / "repos" / "shop").mkdir(parents=True)
    builder = BuildahBuilder(BuildahConfig("build-1", tmp_path / "repos", tmp_path / "work", "127.0.0.1:5000"))
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(request_, lambda _: None))
    assert info.value.step == "clone" and words in str(info.value)
    assert not (tmp_path / "work" / "src").exists()  # nothing was checked out


# --- issue 9: mutable refs are not commits ---------------------------------------------------------------

@pytest.mark.parametrize("commit", [
    "HEAD", "main", "v1", "HEAD~1", "a..b", f"{C1[:7]}", C1[:39], C1 + "0", C1.upper(), f"{C1}..{C2}",
    f"{C1}^{{commit}}", "refs/heads/main", "@", "", 40 * "g", 41 * "a",
])
def test_only_full_commit_ids_are_commits(commit):
    with pytest.raises(TaskError) as info:
        Task.parse({"app": "shop", "commit": commit})
    assert info.value.field == "commit" and "full commit id" in str(info.value)


def test_full_sha1_and_sha256_commit_ids_are_accepted():
    assert Task.parse({"app": "shop", "commit": C1}).id == f"shop@{C1}"
    assert Task.parse({"app": "shop", "commit": 64 * "a"}).commit == 64 * "a"


# --- issue 9 item 3: a record read back from etcd is never a crash ----------------------------------------

DEEP = b"[" * 100000


@pytest.mark.parametrize("raw, field", [
    (DEEP, "task"),
    (b"{" * 50000, "task"),
    (b'{"a":' * 50000, "task"),
    (b"\xff\xfe", "task"),
    (b"1" * 5000, "task"),  # a 5,000-digit integer: ValueError in json, not ours to crash on
    (b"null", "task"),
    (b'"x"' , "task"),
    (b"x" * (300 * 1024), "task"),
    (json.dumps({"app": "shop", "commit": C1, "attempt": 10**400}).encode(), "attempt"),
    (json.dumps({"app": "shop", "commit": C1, "submitted_at": 10**400}).encode(), "submitted_at"),
    (b'{"app": "shop", "commit": "' + C1.encode() + b'", "submitted_at": 1e999}', "submitted_at"),
    (b'{"app": "shop", "commit": "' + C1.encode() + b'", "started_at": NaN}', "started_at"),
    (json.dumps({"app": "shop", "commit": C1, "state": ["queued"]}).encode(), "state"),
    (json.dumps({"app": "shop", "commit": C1, "attempt": True}).encode(), "attempt"),
    (json.dumps({"app": ["shop"], "commit": C1}).encode(), "app"),
    (json.dumps({"app": "shop", "commit": "HEAD"}).encode(), "commit"),
])
def test_an_unreadable_task_record_is_a_task_error_naming_the_field(raw, field):
    with pytest.raises(TaskError) as info:
        Task.from_bytes(raw)
    assert info.value.field == field
    assert len(str(info.value)) < 400  # the record is not echoed back whole


GOOD_RESULT = {"task": f"shop@{C1}", "state": "done", "host": "build-1", "attempt": 1, "image": "r/shop:x",
               "steps": [["clone", 1.0]], "cache_hit": False, "error": "", "submitted_at": 1.0, "finished_at": 2.0,
               "log": ["clone: 1.00s"]}


@pytest.mark.parametrize("change, field", [
    ({"task": "shop@v1"}, "task"),
    ({"task": None}, "task"),
    ({"state": "queued"}, "state"),
    ({"state": {}}, "state"),
    ({"host": "../x"}, "host"),
    ({"attempt": "1"}, "attempt"),
    ({"attempt": 10**400}, "attempt"),
    ({"steps": [["clone"]]}, "steps"),
    ({"steps": [["clone", "fast"]]}, "steps"),
    ({"steps": "clone"}, "steps"),
    ({"steps": [["clone", 1.0]] * 100}, "steps"),
    ({"cache_hit": "yes"}, "cache_hit"),
    ({"error": 7}, "error"),
    ({"finished_at": -1}, "finished_at"),
    ({"log": "one line"}, "log"),
    ({"log": [1]}, "log"),
])
def test_an_unreadable_result_record_is_a_task_error_naming_the_field(change, field):
    assert Result.from_bytes(json.dumps(GOOD_RESULT).encode()).task == f"shop@{C1}"
    with pytest.raises(TaskError) as info:
        Result.from_bytes(json.dumps({**GOOD_RESULT, **change}).encode())
    assert info.value.field == field


def test_a_deeply_nested_result_record_is_a_task_error():
    with pytest.raises(TaskError) as info:
        Result.from_bytes(DEEP)
    assert info.value.field == "result" and "nested" in str(info.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                max_size=4), max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "app": JSON | st.just("shop"), "repo": JSON | st.just("team/shop"), "commit": JSON | st.just(C1),
    "state": JSON | st.sampled_from(["queued", "running"]), "attempt": JSON, "submitted_at": JSON,
    "started_at": JSON, "task": JSON | st.just(f"shop@{C1}"), "host": JSON | st.just("build-1"),
    "steps": JSON, "log": JSON, "error": JSON, "image": JSON, "cache_hit": JSON})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                 FIELDS.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_decode_to_a_record_or_a_task_error(raw):
    for decode in (Task.from_bytes, Result.from_bytes):
        try:
            record = decode(raw)
        except TaskError as exc:
            assert exc.field and str(exc).startswith(f"{exc.field}: ")
        else:  # what decodes survives a round trip: the agent can write back what it read
            assert decode(record.to_bytes()) == record


# --- issue 9 item 1: what goes into an image (the real builder's staging copy; no buildah needed) ---------

def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "out" / "lib").mkdir(parents=True)
    (work / "out" / "start.sh").write_text("echo hi\n")
    os.chmod(work / "out" / "start.sh", 0o4775)  # set-uid and group-writable: both dropped
    (work / "out" / "lib" / "data").write_bytes(b"x" * 3_000_000)
    for path in [work / "out", *(work / "out").rglob("*")] if AS_ROOT else []:  # as the builder's chown
        os.lchown(path, BUILD_USER, BUILD_USER)
    return work


def test_staging_copies_regular_files_and_directories_by_descriptor(tmp_path: Path):
    work = _work(tmp_path)
    stage = tmp_path / "stage"
    assert _stage_out(work, stage, owner=BUILD_USER) == 3
    assert (stage / "start.sh").read_text() == "echo hi\n"
    assert (stage / "start.sh").stat().st_mode & 0o7777 == 0o755
    assert (stage / "lib" / "data").read_bytes() == b"x" * 3_000_000


def _replace_out(work: Path, secret: str) -> None:
    shutil.rmtree(work / "out")
    os.symlink(secret, work / "out")


@pytest.mark.parametrize("plant, where, kind", [
    (_replace_out, "out", "a symbolic link"),
    (lambda w, secret: os.symlink(secret, w / "out" / "lib" / "shadow"), "out/lib/shadow", "a symbolic link"),
    (lambda w, secret: os.symlink("/", w / "out" / "root"), "out/root", "a symbolic link"),
    (lambda w, secret: os.mkfifo(w / "out" / "lib" / "pipe"), "out/lib/pipe", "a FIFO"),
])
def test_staging_refuses_any_link_or_special_file_under_out(tmp_path: Path, plant, where, kind):
    work = _work(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("root-only\n")
    plant(work, str(secret))
    stage = tmp_path / "stage"
    with pytest.raises(BuildFailed) as info:
        _stage_out(work, stage, owner=BUILD_USER)
    assert info.value.step == "image" and f"{where} is {kind}" in str(info.value)
    copied = [p.read_bytes() for p in stage.rglob("*") if p.is_file()] if stage.exists() else []
    assert b"root-only\n" not in copied


def test_staging_bounds_depth(tmp_path: Path):
    work = _work(tmp_path)
    deep = work / "out"
    for _ in range(70):
        deep = deep / "d"
    deep.mkdir(parents=True)
    with pytest.raises(BuildFailed) as info:
        _stage_out(work, tmp_path / "stage", owner=BUILD_USER)
    assert info.value.step == "image" and "nests deeper than 64" in str(info.value)


def test_staging_never_copies_a_host_file_while_a_leftover_process_swaps_links_in(tmp_path: Path):
    """A process the script left behind swaps files and directories under out for links to a host file
    while the image step copies: every copy either fails or holds only the build's own bytes."""
    import threading

    secret = tmp_path / "secret"
    secret.write_bytes(b"HOST-SECRET")
    work = tmp_path / "work"
    out = work / "out"
    (out / "sub").mkdir(parents=True)
    for i in range(40):
        (out / f"f{i}").write_bytes(b"build output")
        (out / "sub" / f"g{i}").write_bytes(b"build output")
    stop = threading.Event()

    def swapper() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            name = f"f{n % 40}"
            os.symlink(secret, out / "link.tmp")
            os.replace(out / "link.tmp", out / name)  # atomically: the file is now a link
            (out / "file.tmp").write_bytes(b"build output")
            os.replace(out / "file.tmp", out / name)  # and back
            os.rename(out / "sub", out / "sub.old")
            os.symlink(tmp_path, out / "sub")  # a directory swapped for a link to the host's
            os.unlink(out / "sub")
            os.rename(out / "sub.old", out / "sub")

    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes = []
    try:
        for run in range(25):
            stage = tmp_path / f"stage{run}"
            try:
                outcomes.append(_stage_out(work, stage, owner=os.geteuid()))  # the swapper is this user
            except BuildFailed as exc:
                assert exc.step == "image"
                outcomes.append(str(exc))
            for path in stage.rglob("*") if stage.exists() else ():
                assert path.is_dir() or path.read_bytes() == b"build output", path
                assert not path.is_symlink()
    finally:
        stop.set()
        thread.join()
    assert any(isinstance(o, str) for o in outcomes)  # the swaps were seen, and refused
