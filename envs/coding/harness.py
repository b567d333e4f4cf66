"""The checker of a coding episode, run as root inside the sandbox (`python3 -I -c <this file>`).

The verdict must be decided where the submitted program cannot reach, so the program and the tests never share
a process:
- the submission runs in a child process as uid/gid 65534 (nobody), with no inherited descriptor but two pipes;
  it cannot signal, trace or read the memory of this root process, and its stdout/stderr go nowhere we print;
- the tests run here, in the checker. Every call of the solution's function is a request over the pipe; the
  answer comes back as tagged JSON and is rebuilt here from builtin types only (exact int, float, str, list,
  tuple, dict, set, …), so an object whose `__eq__`/`__ne__`/`__bool__` lies never reaches an assert, and
  patched builtins, a replaced `assert`, `sys.modules` entries, `atexit` or a swallowed AssertionError live in
  the other process, where they change nothing;
- the task's own helper code (HumanEval's prompt, MBPP's set-up code) is run here, from the task, never from
  the reply: a helper the tests rely on (HumanEval/32's `poly`) cannot be replaced by the submission;
- the per-run token arrives on this process's stdin (the submission never sees it) and is printed only with
  the verdict, on this process's stdout, which the submission cannot write;
- on the time limit, and always at the end, every process of uid 65534 is SIGSTOPped, then SIGKILLed, from
  here, without forking (a fork bomb that has used up the pids limit cannot stop it).

Stdin: one JSON object {token, code, prelude, tests, calls, modules, timeout}. Stdout, last line: `<token> <verdict>`
where verdict is a JSON object {"passed": bool, "detail": str, "timed_out": bool}.
This file runs under the sandbox image's python3 (3.11 here): standard library only.
"""

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time

NOBODY = 65534
MAX_REPLY_BYTES = 16 << 20  # one return value, encoded

CHILD = r"""
import json, os, sys
rpc_in, rpc_out = int(sys.argv[1]), int(sys.argv[2])
reader, writer = os.fdopen(rpc_in, "rb"), os.fdopen(rpc_out, "wb")
objects = []  # instances of the solution's own classes, which the checker holds only as numbered handles


def encode(v, depth=0):
    if depth > 200:
        raise ValueError("value nested too deeply")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return ["i", str(int(v))]
    if isinstance(v, float):
        return ["f", float.hex(float(v))]
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, complex):
        return ["c", float.hex(v.real), float.hex(v.imag)]
    if isinstance(v, (bytes, bytearray)):
        return ["b", bytes(v).hex()]
    if isinstance(v, dict):
        return ["d", [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in dict.items(v)]]
    for tag, kind in (("l", list), ("t", tuple), ("s", set), ("z", frozenset)):
        if isinstance(v, kind):
            return [tag, [encode(x, depth + 1) for x in v]]
    if isinstance(v, range) or type(v).__name__ in ("generator", "map", "filter", "zip", "dict_keys",
                                                        "dict_values", "dict_items", "reversed", "enumerate"):
        return ["g", [encode(x, depth + 1) for x in v]]
    if type(v).__module__ == "__main__":  # a class the solution defines (MBPP's Node, Pair): it stays here
        objects.append(v)
        return ["r", str(len(objects) - 1)]
    raise TypeError("cannot return a " + type(v).__name__ + " to the tests")


def decode(v):
    if v is None or isinstance(v, (bool, str)):
        return v
    tag, body = v[0], v[1:]
    if tag == "i":
        return int(body[0])
    if tag == "f":
        return float.fromhex(body[0])
    if tag == "l":
        return [decode(x) for x in body[0]]
    if tag == "t":
        return tuple(decode(x) for x in body[0])
    if tag == "d":
        return {decode(k): decode(x) for k, x in body[0]}
    if tag == "s":
        return set(decode(x) for x in body[0])
    if tag == "z":
        return frozenset(decode(x) for x in body[0])
    if tag == "c":
        return complex(float.fromhex(body[0]), float.fromhex(body[1]))
    if tag == "y":
        return getattr(__builtins__, body[0])
    if tag == "r":
        return objects[int(body[0])]
    raise ValueError("argument tag " + repr(tag))


def send(obj):
    writer.write(json.dumps(obj).encode() + b"\n")
    writer.flush()


code = json.loads(reader.readline())
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(code, "<solution>", "exec"), namespace)
except BaseException as exc:
    send({"error": type(exc).__name__ + ": " + str(exc)[:300]})
    raise SystemExit(1)
send({"ready": True})
for line in reader:
    request = json.loads(line)
    try:
        if request["op"] == "getattr":
            result = getattr(objects[request["ref"]], request["name"])
        elif request["op"] == "setattr":
            result = setattr(objects[request["ref"]], request["name"], decode(request["value"]))
        else:
            result = namespace[request["name"]](*decode(request["args"]), **decode(request["kwargs"]))
        send({"value": encode(result)})
    except BaseException as exc:
        send({"raise": type(exc).__name__ + ": " + str(exc)[:300]})
"""


class SolutionFailed(Exception):
    """The solution raised, returned something the tests cannot receive, died or broke the protocol."""


class Remote:
    """An instance of one of the solution's classes (MBPP builds its trees of `Node`s this way), left in the
    solution's process: the tests may read and set its attributes and pass it back, each a request over the pipe.
    Its truth, equality and hash are refused, so a remote object can never be what an assert accepts."""

    __slots__ = ("_solution", "_ref")

    def __init__(self, solution, ref):
        object.__setattr__(self, "_solution", solution)
        object.__setattr__(self, "_ref", ref)

    def __getattr__(self, name):
        return self._solution.request({"op": "getattr", "ref": self._ref, "name": name})

    def __setattr__(self, name, value):
        self._solution.request({"op": "setattr", "ref": self._ref, "name": name, "value": encode_argument(value)})

    def _refused(self, *_):
        raise SolutionFailed("the tests used an object of the solution's as a value")

    __bool__ = __eq__ = __ne__ = __hash__ = __lt__ = __le__ = __gt__ = __ge__ = __len__ = __iter__ = _refused


def encode_argument(v):
    """The checker's own arguments (from the tests): plain data only."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if type(v) is int:
        return ["i", str(v)]
    if type(v) is float:
        return ["f", float.hex(v)]
    if type(v) is list:
        return ["l", [encode_argument(x) for x in v]]
    if type(v) is tuple:
        return ["t", [encode_argument(x) for x in v]]
    if type(v) is dict:
        return ["d", [[encode_argument(k), encode_argument(x)] for k, x in v.items()]]
    if type(v) is set or type(v) is frozenset:
        return ["s" if type(v) is set else "z", [encode_argument(x) for x in v]]
    if type(v) is complex:
        return ["c", float.hex(v.real), float.hex(v.imag)]
    if type(v) is type and getattr(__builtins__, v.__name__, None) is v:  # int, str, … as arguments
        return ["y", v.__name__]
    if type(v) is Remote:
        return ["r", v._ref]
    raise SolutionFailed("the tests pass a " + type(v).__name__ + ", which cannot cross to the solution")


def decode_value(v, solution):
    """A returned value rebuilt from builtin types alone (and `Remote` handles): nothing of the solution's runs
    here."""
    if v is None or type(v) is bool or type(v) is str:
        return v
    if type(v) is not list or not v or type(v[0]) is not str:
        raise SolutionFailed("malformed return value")
    tag = v[0]
    if tag == "r":
        return Remote(solution, int(str(v[1])))
    if tag == "i":
        return int(str(v[1]))
    if tag == "f":
        return float.fromhex(str(v[1]))
    if tag == "c":
        return complex(float.fromhex(str(v[1])), float.fromhex(str(v[2])))
    if tag == "b":
        return bytes.fromhex(str(v[1]))
    if tag == "d":
        return {decode_value(k, solution): decode_value(x, solution) for k, x in v[1]}
    kinds = {"l": list, "g": list, "t": tuple, "s": set, "z": frozenset}
    if tag in kinds and type(v[1]) is list:
        return kinds[tag](decode_value(x, solution) for x in v[1])
    raise SolutionFailed("malformed return value")


def nobody_pids():
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == NOBODY:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def kill_everything_of_nobody():
    # Stop first (a stopped process cannot fork), until a pass finds nothing new; then kill all of them.
    for _ in range(1000):
        pids = nobody_pids()
        stopped = 0
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped += 1
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not stopped:
            return


def lowest_priority():
    # The solution and all it forks run at nice 19, for good: a fork bomb's spinning processes then leave this
    # checker most of the container's CPU to stop them with (at one weight among 255 it took over 20 s).
    resource.setrlimit(resource.RLIMIT_NICE, (0, 0))
    os.nice(19)


class Solution:
    def __init__(self, code, deadline):
        self.deadline = deadline
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        scratch = "/tmp/solution"
        os.makedirs(scratch, exist_ok=True)
        os.chown(scratch, NOBODY, NOBODY)
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-c", CHILD, str(to_child_r), str(from_child_w)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(to_child_r, from_child_w),
            cwd=scratch,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch, "LANG": "C.UTF-8"},
            preexec_fn=lowest_priority,
        )
        try:  # under memory pressure the kernel kills the solution, not the checker
            with open(f"/proc/{self.process.pid}/oom_score_adj", "w") as adj:
                adj.write("1000")
        except OSError:
            pass
        os.close(to_child_r)
        os.close(from_child_w)
        self.writer = os.fdopen(to_child_w, "wb")
        self.reader = from_child_r
        self.buffer = b""
        self.send(code)
        hello = self.receive()
        if "error" in hello:
            raise SolutionFailed(str(hello["error"]))

    def send(self, obj):
        try:
            self.writer.write(json.dumps(obj).encode() + b"\n")
            self.writer.flush()
        except OSError as exc:
            raise SolutionFailed("the solution's process is gone") from exc

    def receive(self):
        while b"\n" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.reader], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.reader, 1 << 16)
            if not chunk:
                raise SolutionFailed("the solution's process exited")
            self.buffer += chunk
            if len(self.buffer) > MAX_REPLY_BYTES:
                raise SolutionFailed("the solution returned more than 16 MiB")
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise SolutionFailed("malformed reply") from exc
        if type(reply) is not dict:
            raise SolutionFailed("malformed reply")
        return reply

    def request(self, message):
        self.send(message)
        reply = self.receive()
        if "value" in reply:
            return decode_value(reply["value"], self)
        raise SolutionFailed(str(reply.get("raise", "malformed reply")))

    def proxy(self, name):
        def call(*args, **kwargs):
            args, kwargs = encode_argument(list(args)), encode_argument(kwargs)
            return self.request({"op": "call", "name": name, "args": args, "kwargs": kwargs})

        call.__name__ = name
        return call


def judge(request):
    deadline = time.monotonic() + float(request["timeout"])
    namespace = {"__name__": "__checker__"}
    try:
        for module in request.get("modules", []):  # the tests use a module the reference solution imported
            try:
                namespace[module] = __import__(module)
            except ImportError:
                pass
        exec(compile(request["prelude"], "<task prelude>", "exec"), namespace)
        solution = Solution(request["code"], deadline)
        for name in request["calls"]:
            namespace[name] = solution.proxy(name)
        exec(compile(request["tests"], "<tests>", "exec"), namespace)
    except TimeoutError:
        return {"passed": False, "detail": "timed out", "timed_out": True}
    except AssertionError:
        return {"passed": False, "detail": "a test failed", "timed_out": False}
    except SolutionFailed as exc:
        return {"passed": False, "detail": str(exc)[:300], "timed_out": False}
    except Exception as exc:  # the tests themselves raised on what the solution returned
        return {"passed": False, "detail": (type(exc).__name__ + ": " + str(exc))[:300], "timed_out": False}
    return {"passed": True, "detail": "", "timed_out": False}


def main():
    request = json.loads(sys.stdin.read())
    try:
        verdict = judge(request)
    finally:
        kill_everything_of_nobody()
    sys.stdout.write("\n" + request["token"] + " " + json.dumps(verdict) + "\n")


if __name__ == "__main__":
    main()
