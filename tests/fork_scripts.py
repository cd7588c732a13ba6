"""Run many short script invocations as forked processes of one interpreter.

Reads ``[[name, [script, *args]], ...]`` as JSON on stdin; writes ``{name: [exit code,
stdout, stderr]}`` as JSON on stdout. The heavy packages (torch, stable-baselines3, this
project) are imported once; each command then runs in its own forked child, as
``python script args`` would (its ``__main__``, its argv, its exit code and streams), so a
test of 58 user mistakes does not import torch 58 times (about 5 CPU seconds each on a
2-core host). Two children run at a time.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback

PRELOAD = ("torch", "gymnasium", "stable_baselines3", "pandas", "prune_env.cli", "prune_env.env", "agents",
           "agents.search", "target_models", "experiments")
PARALLEL = 2


def _child(script: str, args: list[str], out_path: str, err_path: str) -> None:
    """Become ``python script args``: never returns."""
    for fd, path in ((1, out_path), (2, err_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as the interpreter does for a script
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:  # what the interpreter makes of sys.exit(...)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    commands = json.load(sys.stdin)
    for module in PRELOAD:
        __import__(module)
    folder = tempfile.mkdtemp(prefix="fork-scripts-")
    running: dict[int, tuple[str, str, str]] = {}
    results: dict[str, list] = {}

    def reap() -> None:
        pid, status = os.wait()
        name, out_path, err_path = running.pop(pid)
        with open(out_path) as out, open(err_path) as err:
            results[name] = [os.waitstatus_to_exitcode(status), out.read(), err.read()]

    for index, (name, command) in enumerate(commands):
        while len(running) >= PARALLEL:
            reap()
        out_path, err_path = (os.path.join(folder, f"{index}.{kind}") for kind in ("out", "err"))
        for path in (out_path, err_path):
            open(path, "w").close()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(command[0], command[1:], out_path, err_path)
        running[pid] = (name, out_path, err_path)
    while running:
        reap()
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
