"""The real Builder's guard rails (root, buildah, git, docker-registry): what a build script may not do,
what a hostile commit cannot break, and what a cancelled build leaves behind (nothing).

Builds name their commit by its full id (``commit()`` returns the request for the new HEAD)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from foundation.adapters.buildah_builder import NOBODY, BuildahBuilder, BuildahConfig, _stage_out
from foundation.ports.builder import BuildFailed, BuildRequest
from lab.registry import running_registry


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def commit(repos: Path, app: str, version: str, files: dict[str, str]) -> BuildRequest:
    repo = repos / app
    if not repo.exists():
        repo.mkdir(parents=True)
        git(repo, "init", "--quiet")
    for name, text in files.items():
        (repo / name).write_text(text)
        git(repo, "add", name)
    git(repo, "commit", "--quiet", "--allow-empty", "-m", version)
    return BuildRequest(app, app, rev_parse(repo, "HEAD"))


def rev_parse(repo: Path, ref: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", ref], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the buildah builder runs as root (chroot isolation): run the integration tier as root")
    with running_registry() as registry:
        builder = BuildahBuilder(BuildahConfig("build-1", tmp_path / "repos", tmp_path / "work", registry.address))
        builder.registry = registry  # for the tests that ask it what was pushed
        yield builder, tmp_path / "repos", tmp_path / "work"


def local_images(builder: BuildahBuilder) -> str:
    return subprocess.run(builder._buildah("images", "--all", "--format", "{{.Name}}:{{.Tag}} {{.ID}}"),
                          capture_output=True, text=True, check=True).stdout


def test_the_build_script_runs_as_nobody_without_the_power_to_leave_its_chroot(lab):
    builder, repos, work = lab
    script = ("set -e\nid -u > /cache/uid\n"
              "if chroot / /bin/true 2>/dev/null; then echo escaped > /cache/escaped; fi\n"
              "echo 'echo hi' > out/start.sh\n")
    request = commit(repos, "shop", "v1", {"build.sh": script})
    outcome = asyncio.run(builder.build(request, lambda _: None))
    cache = work / "cache" / "shop"
    assert (cache / "uid").read_text().strip() == str(NOBODY)
    assert not (cache / "escaped").exists()  # chroot needs CAP_SYS_CHROOT: dropped
    assert outcome.image.endswith(f"/shop:{request.commit}")


def test_a_commit_with_a_file_named_out_fails_its_compile_cleanly(lab):
    builder, repos, _ = lab
    request = commit(repos, "shop", "v1", {"build.sh": "echo 'echo hi' > out/start.sh\n", "out": "not a dir"})
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(request, lambda _: None))
    assert info.value.step == "compile" and "'out'" in str(info.value)


def test_a_cancelled_build_kills_its_script_and_leaves_no_container_or_checkout(lab):
    builder, repos, work = lab
    # A command line no other process on the machine has (pgrep -f looks at every process: a bare
    # "sleep 30" of anything else running here once passed for a script left behind).
    script = f"sleep 29.{os.getpid() % 100000:05d}1"
    request = commit(repos, "shop", "v1", {"build.sh": script + "\n"})

    async def main() -> None:
        task = asyncio.create_task(builder.build(request, lambda _: None))
        for _ in range(200):  # until the script runs
            if subprocess.run(["pgrep", "-f", script], capture_output=True).returncode == 0:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the build script never started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert subprocess.run(["pgrep", "-f", script], capture_output=True).returncode == 1  # no script left
    listed = subprocess.run(builder._buildah("containers", "--format", "{{.ContainerName}}"), capture_output=True,
                            text=True, check=True).stdout.split()
    assert not [n for n in listed if n.startswith("leengine-build-1-")]
    assert not list((work / "src").iterdir())


# --- issue 9: the image holds only what the build made inside its container ------------------------------

@pytest.fixture
def secret(tmp_path):
    """A root-only file of the build host, outside anything a build may read."""
    (tmp_path / "root-only").mkdir(mode=0o700)
    path = tmp_path / "root-only" / "host-secret"
    path.write_text("host-secret-4711\n")
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("plant, where", [
    # out itself replaced, after the builder's pre-compile check, by a link to a root-only host file
    ("rm -rf out\nln -s {secret} out\n", "out"),
    ("rm -rf out\nln -s /etc/shadow out\n", "out"),
    # a link deeper under out, among real output
    ("mkdir -p out/lib/deep\necho 'echo hi' > out/start.sh\nln -s {secret} out/lib/deep/key\n",
     "out/lib/deep/key"),
    # a link to a directory of the host
    ("echo 'echo hi' > out/start.sh\nln -s / out/host\n", "out/host"),
])
def test_a_build_script_that_plants_a_link_to_a_host_file_fails_and_no_image_exists(lab, secret, plant, where):
    builder, repos, _ = lab
    request = commit(repos, "shop", "v1", {"build.sh": "set -e\n" + plant.format(secret=secret)})
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(request, lambda _: None))
    assert info.value.step == "image" and f"{where} is a symbolic link" in str(info.value), info.value
    assert builder.registry.tags("shop/shop") == []  # nothing pushed ...
    assert request.commit not in local_images(builder)  # ... nor committed locally
    listed = subprocess.run(builder._buildah("containers", "--format", "{{.ContainerName}}"), capture_output=True,
                            text=True, check=True).stdout.split()
    assert not [n for n in listed if n.startswith("leengine-build-1-")]


def test_a_fifo_or_socket_under_out_fails_the_build(lab):
    builder, repos, _ = lab
    request = commit(repos, "shop", "v1", {"build.sh": "set -e\necho 'echo hi' > out/start.sh\nmkfifo out/pipe\n"})
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(request, lambda _: None))
    assert info.value.step == "image" and "out/pipe is a FIFO" in str(info.value)
    assert builder.registry.tags("shop/shop") == []


def test_the_image_holds_the_files_the_build_made_without_set_id_bits(lab):
    builder, repos, _ = lab
    script = ("set -e\nmkdir -p out/bin\necho 'echo hi' > out/start.sh\necho data > out/bin/tool\n"
              "chmod 4755 out/bin/tool\n")
    request = commit(repos, "shop", "v1", {"build.sh": script})
    outcome = asyncio.run(builder.build(request, lambda _: None))
    assert builder.registry.tags("shop/shop") == [request.commit]
    # Pull it back and look inside: /app is out/, modes without the set-uid bit.
    name = "leengine-test-inspect"
    subprocess.run(builder._buildah("from", "--quiet", "--tls-verify=false", "--name", name,
                                    f"docker://{outcome.image}"), check=True, capture_output=True)
    try:
        mount = subprocess.run(builder._buildah("mount", name), check=True, capture_output=True,
                               text=True).stdout.strip()
        app = Path(mount) / "app"
        assert (app / "start.sh").read_text() == "echo hi\n" and (app / "bin" / "tool").read_text() == "data\n"
        assert (app / "bin" / "tool").stat().st_mode & 0o7777 == 0o755
    finally:
        subprocess.run(builder._buildah("rm", name), capture_output=True)


def test_a_build_script_cannot_rewrite_the_repository_it_was_cloned_from(lab):
    """The checkout is the script's (nobody's): it must share no inode with the repository store."""
    builder, repos, _ = lab
    script = ("for f in .git/objects/??/*; do chmod u+w \"$f\" 2>/dev/null; printf garbage > \"$f\" || true; done\n"
              "echo 'echo hi' > out/start.sh\n")
    request = commit(repos, "shop", "v1", {"build.sh": script})
    asyncio.run(builder.build(request, lambda _: None))
    checked = subprocess.run(["git", "-C", str(repos / "shop"), "fsck", "--full"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    owners = {p.stat().st_uid for p in (repos / "shop" / ".git" / "objects").rglob("*") if p.is_file()}
    assert owners == {0}


# --- issue 9: a build is of one commit, named by its full id --------------------------------------------

def test_a_ref_is_not_a_commit_and_an_annotated_tag_id_is_not_one_either(lab):
    builder, repos, _ = lab
    request = commit(repos, "shop", "v1", {"build.sh": "echo 'echo hi' > out/start.sh\n"})
    for ref in ("HEAD", "master", "main", request.commit[:7]):
        with pytest.raises(BuildFailed) as info:
            asyncio.run(builder.build(BuildRequest("shop", "shop", ref), lambda _: None))
        assert info.value.step == "clone" and "not a plain name" in str(info.value)
    git(repos / "shop", "tag", "-a", "-m", "release", "v1")
    tag_object = rev_parse(repos / "shop", "v1")
    assert tag_object != request.commit and len(tag_object) == 40
    with pytest.raises(BuildFailed) as info:
        asyncio.run(builder.build(BuildRequest("shop", "shop", tag_object), lambda _: None))
    assert info.value.step == "clone" and "is not a commit" in str(info.value)
    assert builder.registry.tags("shop/shop") == []


def test_nothing_the_build_script_started_outlives_its_build(lab):
    """A `cmd &` (even in a new session) would otherwise run on as nobody, beside the next builds."""
    builder, repos, _ = lab
    script = ("(sleep 71 >/dev/null 2>&1 &)\nsetsid sleep 72 >/dev/null 2>&1 </dev/null &\n"
              "echo 'echo hi' > out/start.sh\n")
    asyncio.run(builder.build(commit(repos, "shop", "v1", {"build.sh": script}), lambda _: None))
    left = subprocess.run(["pgrep", "-a", "-f", "sleep 7[12]"], capture_output=True, text=True).stdout
    for line in left.splitlines():  # end them whatever happens, by pid (this test started them)
        os.kill(int(line.split()[0]), 9)
    assert left == ""


def test_staging_refuses_a_hard_link_to_a_file_the_build_does_not_own(tmp_path: Path):
    """A hard link keeps its file's owner: out/lib/secret linked to a root-owned host file is refused.

    Root tier: the build's tree must belong to nobody and the host file to root, as on a build host.
    """
    out = tmp_path / "work" / "out"
    (out / "lib").mkdir(parents=True)
    (out / "start.sh").write_text("echo hi\n")
    for path in [out, *out.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    host_file = tmp_path / "secret"
    host_file.write_text("root-only\n")
    os.chown(host_file, 0, 0)
    os.link(host_file, out / "lib" / "secret")
    stage = tmp_path / "stage"
    with pytest.raises(BuildFailed) as info:
        _stage_out(tmp_path / "work", stage, owner=NOBODY)
    assert info.value.step == "image" and "out/lib/secret is not the build's own file" in str(info.value)
    copied = [p.read_bytes() for p in stage.rglob("*") if p.is_file()] if stage.exists() else []
    assert b"root-only\n" not in copied
