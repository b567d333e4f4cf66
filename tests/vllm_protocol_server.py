"""A test instrument: an HTTP server that answers as vLLM's source says `vllm serve` answers, for the protocol
tests (tests/test_vllm_protocol.py). It is not vLLM and verifies nothing about vLLM; it follows these files:

- vLLM 0.16.0 entrypoints/openai/basic/api_router.py: GET /version → {"version": VLLM_VERSION};
- 0.16.0 entrypoints/serve/rlhf/api_router.py (dev mode): POST /pause?mode=abort|wait|keep → {"status": "paused"}
  (mode=wait returns once in-flight requests are done: v1/engine/async_llm.py `pause_generation`), POST /resume →
  {"status": "resumed"}; while paused, new generation requests wait for the resume (async_llm.py
  `_pause_cond.wait_for`);
- 0.16.0 entrypoints/serve/rpc/api_router.py: POST /collective_rpc {"method", "args", "kwargs"} →
  {"results": [one per worker]}; `reload_weights` (v1/worker/gpu_model_runner.py) takes `weights_path` from
  0.16.0 on; before it the unexpected keyword fails in the worker, which reaches the client as HTTP 500;
- 0.16.0 entrypoints/serve/cache/api_router.py: POST /reset_prefix_cache → an empty 200 ("we currently do not
  check if the prefix cache is successfully reset"); 0.33.0 entrypoints/serve/dev/cache/api_router.py answers
  {"success": bool}, false while blocks are held;
- 0.16.0 entrypoints/openai/completion/protocol.py and serving.py: /v1/completions with `prompt_logprobs` and
  `return_token_ids` → choices[0].prompt_logprobs = [None, {"<token id>": {"logprob", "rank",
  "decoded_token"}}, …] and choices[0].prompt_token_ids.

The "model" is the weights' bytes: each prompt token's log-prob is derived from a hash of the checkpoint's
*.safetensors (read at load, as vLLM loads them into memory), plus a little noise, as serving is not
batch-invariant. Chat answers say which weights answered. Like vLLM's engine core, a child process runs in the
server's process group. Every event is appended to $FAKE_VLLM_EVENTS as a JSON line; $FAKE_VLLM_CONTROL (JSON,
read on every request) scripts failures: {"fail_reload": true, "ignore_reload": true, "reset_success": false,
"chat_delay_s": 1.0}.

Run as `python vllm_protocol_server.py serve MODEL --port P …` (the argv VLLMManager builds after its launcher).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

VERSION = os.environ.get("FAKE_VLLM_VERSION", "0.16.0")
EVENTS = Path(os.environ["FAKE_VLLM_EVENTS"])
CONTROL = Path(os.environ.get("FAKE_VLLM_CONTROL", "/nonexistent"))


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3])


def weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Engine:
    def __init__(self, model: str) -> None:
        self.lock = threading.Condition()
        self.paused = False
        self.in_flight = 0
        self.weights = weights_digest(Path(model))
        self.model = model

    def event(self, name: str, **fields: object) -> None:
        with EVENTS.open("a") as f:
            f.write(json.dumps({"event": name, "t": time.time(), "pid": os.getpid(), **fields}) + "\n")

    def control(self) -> dict:
        try:
            return json.loads(CONTROL.read_text())
        except (OSError, ValueError):
            return {}

    def generation(self):  # noqa: ANN201 - a context manager over one generation request
        engine = self

        class Generation:
            def __enter__(self) -> None:
                with engine.lock:
                    engine.lock.wait_for(lambda: not engine.paused)
                    engine.in_flight += 1

            def __exit__(self, *exc: object) -> None:
                with engine.lock:
                    engine.in_flight -= 1
                    engine.lock.notify_all()

        return Generation()


class Handler(BaseHTTPRequestHandler):
    engine: Engine

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: object = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlparse(self.path).path
        if path == "/health":
            self.reply(200)
        elif path == "/version":
            self.reply(200, {"version": VERSION})
        else:
            self.reply(404, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        engine, control = self.engine, self.engine.control()
        if url.path == "/pause":
            mode = query.get("mode", "abort")
            if mode not in ("abort", "wait", "keep"):
                self.reply(422, {"detail": [{"loc": ["query", "mode"], "msg": "Input should be 'abort', 'wait' or "
                                             "'keep'"}]})  # fmt: skip
                return
            with engine.lock:
                engine.paused = True
                if mode == "wait":
                    engine.lock.wait_for(lambda: engine.in_flight == 0)
            engine.event("pause", mode=mode)
            self.reply(200, {"status": "paused"})
        elif url.path == "/resume":
            with engine.lock:
                engine.paused = False
                engine.lock.notify_all()
            engine.event("resume")
            self.reply(200, {"status": "resumed"})
        elif url.path == "/collective_rpc":
            self.collective_rpc(body, control)
        elif url.path == "/reset_prefix_cache":
            engine.event("reset_prefix_cache")
            if version_tuple(VERSION) >= (0, 33, 0):
                self.reply(200, {"success": bool(control.get("reset_success", True))})
            else:
                self.reply(200)
        elif url.path == "/v1/completions":
            with engine.generation():
                self.reply(200, self.completion(body))
        elif url.path == "/v1/chat/completions":
            with engine.generation():
                engine.event("chat_start", weights=engine.weights)
                time.sleep(float(control.get("chat_delay_s", 0.0)))
                engine.event("chat_end", weights=engine.weights)
                self.reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                                 "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"weights {engine.weights[:12]}"}}],
                                 "usage": {"prompt_tokens": 5, "completion_tokens": 3}})  # fmt: skip
        else:
            self.reply(404, {"detail": "Not Found"})

    def collective_rpc(self, body: dict, control: dict) -> None:
        engine = self.engine
        # the worker extension's method (serving/in_vllm/cycleqd_vllm_reload.py) calls reload_weights itself
        if body.get("method") not in ("reload_weights", "reload_weights_and_tied_head"):
            self.reply(500, None)
            return
        path = (body.get("kwargs") or {}).get("weights_path")
        engine.event("reload_weights", path=path)
        if path is not None and version_tuple(VERSION) < (0, 16, 0):
            # TypeError: reload_weights() got an unexpected keyword argument 'weights_path', in the worker
            self.send_error(500, "Internal Server Error")
            return
        if control.get("fail_reload") or (path is not None and not Path(path).is_dir()):
            self.send_error(500, "Internal Server Error")
            return
        if not control.get("ignore_reload"):
            engine.weights, engine.model = weights_digest(Path(path or engine.model)), path or engine.model
        self.reply(200, {"results": [None]})

    def completion(self, body: dict) -> dict:
        words = str(body["prompt"]).split()
        ids = [int.from_bytes(hashlib.sha256(w.encode()).digest()[:3], "little") for w in words]
        entries: list[dict | None] = [None]
        for i, (word, token) in enumerate(zip(words[1:], ids[1:], strict=True)):
            seed = int.from_bytes(hashlib.sha256(f"{self.engine.weights}:{i}".encode()).digest()[:4], "little")
            value = -(0.3 + 8 * (seed / 2**32)) + random.uniform(-0.002, 0.002)
            entries.append({str(token): {"logprob": value, "rank": 1, "decoded_token": word}})
        choice = {"index": 0, "text": " x", "logprobs": None, "finish_reason": "length", "prompt_logprobs": entries,
                  "prompt_token_ids": ids if body.get("return_token_ids") else None}  # fmt: skip
        return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": [choice]}


def main() -> None:
    argv = sys.argv[1:]
    assert argv[0] == "serve", argv
    model, port = argv[1], int(argv[argv.index("--port") + 1])
    if not Path(model).is_dir():
        print(f"ValueError: {model} is not a model folder", file=sys.stderr)
        sys.exit(1)
    engine_core = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # same process group
    Handler.engine = Engine(model)
    Handler.engine.event("start", model=model, engine_core=engine_core.pid, argv=argv,
                         cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                         dev_mode=os.environ.get("VLLM_SERVER_DEV_MODE"))  # fmt: skip
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
