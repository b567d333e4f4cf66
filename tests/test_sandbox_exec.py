"""One-shot exec and files against a real container."""

from __future__ import annotations

import pytest

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.errors import ImageMissingError, SandboxStoppedError
from tests.sandbox_settings import TEST_LIMITS


async def test_script_exit_code_and_separate_streams(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec("echo out; echo err >&2; exit 7")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert not result.ok and not result.timed_out


async def test_argv_is_not_interpreted_by_a_shell(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec(["echo", "$HOME", "a;b"])
    assert result.stdout == "$HOME a;b\n" and result.exit_code == 0


async def test_missing_program_is_exit_127(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec(["no-such-program"])
    assert result.exit_code == 127 and "not found" in result.stderr


async def test_stdin_is_fed_and_closed(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec(["wc", "-l"], stdin="a\nb\nc\n")
    assert result.stdout.strip() == "3"


async def test_large_stdin_with_concurrent_output(sandbox: DockerSandbox) -> None:
    data = "x" * 200_000
    result = await sandbox.exec(["cat"], stdin=data)
    assert result.stdout == data and result.exit_code == 0


async def test_user_workdir_and_env(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec(
        "echo $(whoami) $(pwd) $GREETING", user="nobody", workdir="/tmp", env={"GREETING": "hi"}
    )
    assert result.stdout == "nobody /tmp hi\n"


async def test_timeout_kills_the_whole_tree_and_sandbox_stays_usable(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec("sleep 100 & sleep 100; echo never", timeout=1)
    assert result.timed_out and result.exit_code is None and "never" not in result.stdout
    assert 1 <= result.duration_s < 5
    survivors = await sandbox.exec("ps -eo comm | grep -c '^sleep' || true")
    assert survivors.stdout.strip() == "0"


async def test_output_cap_stops_a_flood(sandbox: DockerSandbox) -> None:
    result = await sandbox.exec(["yes"])
    assert result.output_truncated and not result.timed_out
    assert len(result.stdout.encode()) == TEST_LIMITS.output_cap_bytes
    assert (await sandbox.exec(["true"])).exit_code == 0


async def test_files_round_trip_bytes_and_create_parents(sandbox: DockerSandbox) -> None:
    payload = bytes(range(256)) * 10
    await sandbox.write_file("/data/deep/blob.bin", payload, mode=0o600)
    assert await sandbox.read_file("/data/deep/blob.bin") == payload
    listing = await sandbox.exec("stat -c '%a %U' /data/deep/blob.bin; stat -c %a /tmp")
    assert listing.stdout == "600 root\n1777\n"  # existing folders keep their mode


async def test_read_file_respects_max_bytes_and_missing_file(sandbox: DockerSandbox) -> None:
    await sandbox.write_file("/tmp/big.txt", "y" * 100_000)
    assert await sandbox.read_file("/tmp/big.txt", max_bytes=10) == b"y" * 10
    with pytest.raises(FileNotFoundError, match="/tmp/nope"):
        await sandbox.read_file("/tmp/nope")


async def test_use_after_stop_is_a_clear_error(os_image: str) -> None:
    box = await DockerSandbox.start(os_image, limits=TEST_LIMITS)
    await box.stop()
    await box.stop()  # idempotent
    with pytest.raises(SandboxStoppedError):
        await box.exec(["true"])


async def test_missing_image_is_a_clear_error(docker_engine: object) -> None:
    with pytest.raises(ImageMissingError, match="cycleqd images build"):
        await DockerSandbox.start("cycleqd/no-such-image:0", limits=TEST_LIMITS)
