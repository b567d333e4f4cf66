"""The persistent bash session: exact outputs, state that carries over, and recovery from bad commands."""

from __future__ import annotations

import time

import docker
import pytest

from cycleqd.sandboxes.docker_sandbox import DockerSandbox
from cycleqd.sandboxes.errors import SessionClosedError
from cycleqd.sandboxes.shell_session import BashSession, ansi_c_quote
from tests.sandbox_settings import TEST_LIMITS


async def test_cwd_and_variables_carry_over(session: BashSession) -> None:
    assert (await session.run("cd /tmp; x=3")).output == ""
    result = await session.run("pwd; echo $x")
    assert (result.output, result.exit_code) == ("/tmp\n3\n", 0)


async def test_output_is_exact_with_no_added_newline_or_junk(session: BashSession) -> None:
    assert (await session.run("printf abc")).output == "abc"
    assert (await session.run("printf 'a\\n\\nb\\n\\n'")).output == "a\n\nb\n\n"
    assert (await session.run("true")).output == ""


async def test_exit_status_and_stderr_interleaved(session: BashSession) -> None:
    result = await session.run("echo one; echo two >&2; echo three; false")
    assert (result.output, result.exit_code) == ("one\ntwo\nthree\n", 1)


async def test_functions_aliases_and_multiline_heredoc(session: BashSession) -> None:
    await session.run("greet() { echo \"hello $1\"; }\nalias ll='echo aliased'")
    assert (await session.run("greet you; ll")).output == "hello you\naliased\n"
    result = await session.run("cat <<'EOF'\nline 1\n  $not_expanded\nEOF")
    assert result.output == "line 1\n  $not_expanded\n"


async def test_su_switches_user_until_exit(session: BashSession) -> None:
    await session.run("su - nobody -s /bin/bash")
    assert (await session.run("whoami")).output == "nobody\n"
    await session.run("exit")
    assert (await session.run("whoami")).output == "root\n"


async def test_sleep_is_cut_at_the_limit_and_next_command_works(session: BashSession) -> None:
    slow = await session.run("sleep 100")
    assert slow.timed_out
    assert TEST_LIMITS.command_timeout_s <= slow.duration_s < TEST_LIMITS.command_timeout_s + 3
    after = await session.run("echo after")
    assert (after.output, after.exit_code, after.timed_out) == ("after\n", 0, False)


async def test_command_that_eats_stdin_is_recovered(session: BashSession) -> None:
    await session.run("x=kept")
    stuck = await session.run("cat", timeout=1)
    assert stuck.timed_out
    assert (await session.run("echo $x")).output == "kept\n"


async def test_yes_is_capped_and_session_survives(session: BashSession) -> None:
    flood = await session.run("yes")
    assert flood.output_truncated and not flood.timed_out
    assert len(flood.output.encode()) == TEST_LIMITS.output_cap_bytes
    assert (await session.run("echo ok")).output == "ok\n"


async def test_syntax_errors_do_not_hang(session: BashSession) -> None:
    result = await session.run("echo 'unbalanced")
    assert result.exit_code == 2 and not result.timed_out and "unexpected EOF" in result.output
    assert (await session.run("echo fine")).output == "fine\n"


async def test_verbose_mode_cannot_fake_the_sentinel(session: BashSession) -> None:
    await session.run("set -v")
    result = await session.run("echo visible")
    assert (result.exit_code, result.output) == (0, "echo visible\nvisible\n")


async def test_non_utf8_output_is_replaced_not_fatal(session: BashSession) -> None:
    assert (await session.run("printf 'a\\xffb'")).output == "a\ufffdb"


async def test_exit_ends_the_session(session: BashSession) -> None:
    result = await session.run("exit 4")
    assert result.session_ended and result.exit_code == 4
    with pytest.raises(SessionClosedError):
        await session.run("echo hi")


def test_ansi_c_quote_round_trips_through_bash() -> None:
    import subprocess

    text = 'it\'s a \\ test\n\ttab $HOME `x` "q" é\x01'
    out = subprocess.run(["bash", "-c", f"printf %s {ansi_c_quote(text)}"], capture_output=True, text=True)
    assert out.stdout == text


async def test_sessions_on_an_idle_sandbox_cost_no_exec(sandbox: DockerSandbox, docker_engine: docker.DockerClient):
    since = time.time() - 1
    for _ in range(3):
        shell = await sandbox.open_session(workdir="/tmp")
        assert (await shell.run("pwd")).output == "/tmp\n"
        await shell.close()
    events = docker_engine.events(since=since, until=time.time() + 1, decode=True,
                                  filters={"container": sandbox.id, "event": "exec_create"})  # fmt: skip
    assert [e["Action"] for e in events] == []


async def test_each_session_gets_a_fresh_shell(sandbox: DockerSandbox) -> None:
    first = await sandbox.open_session()
    await first.run("cd /etc; X=1; alias l=true")
    pid = (await first.run("echo $$")).output
    await first.close()
    second = await sandbox.open_session()
    assert (await second.run("pwd; echo ${X:-unset}; type l >/dev/null 2>&1 || echo no-alias")).output == (
        "/\nunset\nno-alias\n"
    )
    assert (await second.run("echo $$")).output != pid
    assert (await second.run("exit 3")).exit_code == 3
    await second.close()
    third = await sandbox.open_session()
    assert (await third.run("echo again")).output == "again\n"
    await third.close()


async def test_two_sessions_at_once_are_two_shells(sandbox: DockerSandbox) -> None:
    one, two = await sandbox.open_session(), await sandbox.open_session()
    await one.run("X=one")
    await two.run("X=two")
    assert [(await s.run("echo $X")).output for s in (one, two)] == ["one\n", "two\n"]
    await one.close()
    await two.close()
