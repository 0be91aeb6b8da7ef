"""A command's `main()` in a process of its own, forked from the test's interpreter instead of started fresh: a fresh
interpreter spends 5 to 12 s of a 2-core CI importing torch and transformers before a tiny run's first step, and the
forked child has them already. The child is a real process (killed by SIGKILL, exit status, its own stdout and stderr,
one OpenMP thread as `OMP_NUM_THREADS=1` gives a fresh one); what a fresh interpreter adds, the console script's own
start, is tested once per script by test_entry_points.py."""
import io, os, runpy, signal, subprocess, sys, tempfile, time, traceback
from pathlib import Path

class Forked:
    "`main()` running in a forked child, in folder `cwd` with `path` first on `sys.path`, `argv` as `sys.argv[1:]` and `env` added to the environment; `poll`, `wait` and `kill` as `subprocess.Popen` has them."
    def __init__(self, main, argv=(), cwd=None, path=(), env=None, prog='vlmkit'):
        self.args = [prog, *map(str, argv)]
        self._files = [tempfile.TemporaryFile() for _ in range(2)]
        for f in (sys.stdout, sys.stderr): f.flush()
        self.pid, self.returncode = os.fork(), None
        if self.pid == 0: self._child(main, cwd, path, env or {})

    def _child(self, main, cwd, path, env):
        code = 1
        try:
            for fd, f in zip((1, 2), self._files): os.dup2(f.fileno(), fd)
            sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, 'w', closefd=False), line_buffering=True) for fd in (1, 2))
            signal.signal(signal.SIGINT, signal.SIG_DFL); signal.signal(signal.SIGTERM, signal.SIG_DFL)
            import torch
            torch.set_num_threads(1)
            if cwd is not None: os.chdir(cwd)
            os.environ.update(env)
            sys.path[:0] = [str(p) for p in path]
            sys.argv = list(self.args)
            try: code = main()
            except SystemExit as e: code = e.code
            if isinstance(code, str): print(code, file=sys.stderr); code = 1
            code = 0 if code is None else code
        except BaseException: traceback.print_exc()
        finally:
            try: sys.stdout.flush(); sys.stderr.flush()
            finally: os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid: self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout:float|None=None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                self.kill(); self.wait()
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self):
        if self.returncode is None: os.kill(self.pid, signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        "What the child wrote to its stdout and stderr."
        texts = []
        for f in self._files:
            f.seek(0); texts.append(f.read().decode(errors='replace')); f.close()
        return tuple(texts)

def run_forked(main, argv=(), timeout:float=600, **kw) -> subprocess.CompletedProcess:
    "`main()` in a forked child (`Forked`), waited for: its exit status, stdout and stderr, as `subprocess.run` gives them."
    p = Forked(main, argv, **kw)
    p.wait(timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, *p.output())

def script_main(script:Path):
    "A script run as `python script ...` runs it (`__main__`), for `Forked`/`run_forked`."
    def main():
        sys.path.insert(0, str(Path(script).parent))
        runpy.run_path(str(script), run_name='__main__')
    return main

def wait_until_written(p:Forked, path:Path, timeout:float=300) -> bool:
    "Wait until `p` ends or the JSON file `path` reads whole (a checkpoint's trainer_state.json, its last file); whether it does."
    import json
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
        try: json.loads(Path(path).read_text()); return True
        except (OSError, ValueError): time.sleep(0.005)
    return False
