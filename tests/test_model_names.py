"""Model names as users of other harnesses type them: `openai/MODEL` from the environment, `vllm/…`, `hf/…`, and
a bare hub name that is refused in one line without touching the network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cycleqd.serving.errors import ModelRefError
from cycleqd.serving.model_ref import OPENAI_BASE_URL, ExternalEndpoint, parse_model_ref
from cycleqd.serving.resolve import manager_for, resolve_model, server_choice

ROOT = Path(__file__).resolve().parents[1]


def test_openai_names_take_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    ref = parse_model_ref("openai/gpt-4o")
    assert ref == ExternalEndpoint("http://127.0.0.1:9/v1", "gpt-4o", "OPENAI_API_KEY")
    assert ref.api_key() == "sk-from-env"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert parse_model_ref("openai/gpt-4o-mini") == ExternalEndpoint(OPENAI_BASE_URL, "gpt-4o-mini")
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000")
    with pytest.raises(ModelRefError, match=r"\$OPENAI_BASE_URL='localhost:8000': expected an http\(s\) URL"):
        parse_model_ref("openai/gpt-4o")


def test_vllm_prefix_names_the_server(tmp_path: Path) -> None:
    assert server_choice("vllm/hf/Qwen/Qwen2.5-0.5B", "auto") == "vllm"
    assert server_choice("hf/Qwen/Qwen2.5-0.5B", "auto") == "auto"
    with pytest.raises(ModelRefError, match="names the vllm server, but --server transformers"):
        server_choice("vllm/hf/Qwen/Qwen2.5-0.5B", "transformers")
    assert parse_model_ref("vllm/hf/Qwen/Qwen2.5-0.5B").label == "Qwen/Qwen2.5-0.5B"


# Every socket the process opens or resolves is reported and ends it: "no network touched" is observed, not assumed.
NO_NETWORK = textwrap.dedent(
    """
    import os, sys
    def hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.sendmsg"):
            os.write(2, f"NETWORK {event} {args!r}\\n".encode())
            os._exit(99)
    sys.addaudithook(hook)
    sys.argv = ["cycleqd", *sys.argv[1:]]
    from cycleqd.cli import main
    main()
    """
)


@pytest.mark.parametrize("args", [("eval",), ("chat", "hi")])
def test_a_bare_hub_name_is_one_line_and_touches_no_network(args: tuple[str, ...], tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    extra = ["--db", str(db)] if args[0] == "eval" else []
    done = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, *args, "--model", "openai-community/gpt2", *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "NETWORK" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "write hf/openai-community/gpt2 (or pass --allow-download)" in lines[0]
    assert not db.exists()  # nothing was created either


@pytest.mark.slow
async def test_an_openai_name_answers_from_the_endpoint_the_environment_names(
    tserve,
    default_model,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Protocol test against a real OpenAI-compatible server (transformers serve with SmolLM2): `openai/MODEL` goes to
    $OPENAI_BASE_URL with $OPENAI_API_KEY, and the answer is stamped with that endpoint's model."""
    monkeypatch.setenv("OPENAI_BASE_URL", tserve.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    await tserve.serve(default_model)
    ref = resolve_model(f"openai/{default_model.path}")
    assert isinstance(ref, ExternalEndpoint) and ref.base_url == tserve.base_url.rstrip("/")
    async with manager_for(ref) as manager:
        await manager.serve(ref)
        reply = await manager.chat([{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert reply.usage.completion_tokens > 0
    assert reply.identity == f"endpoint:{tserve.base_url.rstrip('/')}#{default_model.path}"
