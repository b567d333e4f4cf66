"""Trust in a passing check (envs/os/trust.py) and what it stands on (sandboxes/file_witness.py, process_freeze.py,
layer_scan.py, other_mounts.py): the naming rules without Docker, then each piece against a real container."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cycleqd.envs.os.trust import Named, changed_since
from cycleqd.sandboxes.contract import EntryKind, LayerEntry, LayerScan
from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.layer_scan import scan_upper
from tests.sandbox_settings import TEST_LIMITS


def entry(kind: EntryKind, stamp: int = 1, in_image: bool = True, opaque: bool = False) -> LayerEntry:
    return LayerEntry(kind, (1, stamp), in_image, opaque=opaque)


def test_a_check_names_paths_home_relative_and_working_folder_paths_and_words() -> None:
    named = Named.from_sources(["cat ~/.bashrc /srv/app/*.conf; ls data | grep -q x; hello"], "/")
    assert named.names("/root/.bashrc") and named.names("/srv/app/main.conf") and named.names("/data/a")
    assert {"hello", "grep", "data"} <= named.words
    assert not named.names("/etc/nsswitch.conf")


def test_a_named_folder_covers_what_lies_below_but_never_from_slash_or_a_kept_out_folder() -> None:
    named = Named.from_sources(["find /usr -perm -4000; ls /"], "/")
    assert named.names("/usr/k/file") and not named.names("/usr/bin/grep", keep_out={"/usr"})
    assert not named.names("/etc/passwd")  # `/` names itself, not what lies below it


def test_what_changed_since_the_set_up_is_every_entry_but_folders_and_the_other_mounts_apart() -> None:
    baseline = LayerScan(
        {"/usr/k": entry(EntryKind.FILE, in_image=False)}, False, {"/dev/null": entry(EntryKind.SPECIAL)}
    )
    now = LayerScan(
        {
            "/usr/k": entry(EntryKind.FILE, in_image=False),  # the set-up's, untouched
            "/usr/bin": entry(EntryKind.DIR, 2),  # a folder: what changed below it is listed itself
            "/usr/bin/grep": entry(EntryKind.FILE, 2),
            "/etc/magic.d": entry(EntryKind.DIR, 2, opaque=True),  # removed and made again
        },
        False,
        {"/dev/null": entry(EntryKind.FILE, 3), "/dev/shm/x": entry(EntryKind.FILE, in_image=False)},
    )
    layer, other = changed_since(baseline, now)
    assert set(layer) == {"/usr/bin/grep", "/etc/magic.d"}
    assert other == ["changed /dev/null", "made /dev/shm/x"]


async def test_a_sandbox_starts_without_a_warning(os_image: str, caplog: pytest.LogCaptureFixture) -> None:
    """What a sandbox may write is said once by `cycleqd doctor`, not in every eval's progress bar."""
    caplog.set_level(logging.WARNING)
    async with await DockerSandbox.start(os_image, limits=TEST_LIMITS):
        pass
    assert [r.getMessage() for r in caplog.records if r.name.startswith("cycleqd")] == []


@pytest.fixture
async def box(os_image: str):  # noqa: ANN201
    async with await DockerSandbox.start(os_image, limits=TEST_LIMITS) as sandbox:
        yield sandbox


async def test_the_witness_records_what_checks_open_and_nothing_of_the_agent(box: DockerSandbox) -> None:
    """Agent processes (one capability short) are stopped and unrecorded; a check's opens are recorded with the path
    reached after links and whether it was executed."""
    session = await box.open_session()
    await session.run("ln -s /bin/true /usr/local/bin/yes-man; (while :; do cat /etc/hostname >/dev/null; done) &")
    async with box.witness_checks() as evidence:
        await asyncio.sleep(0.3)  # the agent's loop would read /etc/hostname many times here
        result = await box.exec(["sh", "-c", "yes-man; cat /etc/os-release >/dev/null"])
    assert result.exit_code == 0 and evidence.complete, evidence.why_incomplete
    assert evidence.opened["/usr/bin/true"].executed and not evidence.opened["/usr/lib/os-release"].executed
    assert "/etc/hostname" not in evidence.opened and "/usr/bin/cat" in evidence.opened
    assert await box.resolve("/usr/local/bin/yes-man") == "/usr/bin/true"


async def test_every_process_of_the_agent_is_stopped_before_the_checks_even_a_forking_one(box: DockerSandbox) -> None:
    session = await box.open_session()
    await session.run("(while :; do (sleep 5 &) ; done) >/dev/null 2>&1 &")
    listing = 'for d in /proc/[0-9]*; do echo "$(grep CapBnd $d/status | cut -f2) $(cut -d" " -f3 $d/stat)"; done'
    async with box.witness_checks() as evidence:
        states = await box.exec(["sh", "-c", listing])
    assert evidence.complete, evidence.why_incomplete
    agent = [line.split() for line in states.stdout.splitlines() if not int(line.split()[0], 16) >> 28 & 1]
    assert len(agent) >= 3 and all(state in "TtZ" for _, state in agent), states.stdout


async def test_the_layer_is_read_whole_and_a_flood_is_said_not_cut(box: DockerSandbox) -> None:
    session = await box.open_session()
    await session.run("mkdir /tmp/f && cd /tmp/f && seq 1 500 | xargs touch && rm /usr/bin/wc && mkfifo /tmp/p")
    scan = await box.layer()
    assert not scan.flooded and len([p for p in scan.entries if p.startswith("/tmp/f/")]) == 500
    assert scan.entries["/usr/bin/wc"].kind == EntryKind.WHITEOUT and scan.entries["/tmp/p"].kind == EntryKind.SPECIAL
    upper, lower, _ = box._host_view()
    assert scan_upper(upper, lower, limit=100).flooded
    assert "/dev/null" in scan.unwatched and "/etc/hosts" in scan.unwatched
