"""The python tool's sandbox: code runs in a separate, limited process.

    run_python("print(sum(range(10)))").observation()     # '45'

Layers, each reported in the observation when it stops something:
- a separate process (`sys.executable -I`: no user site, no PYTHON* variables, the script's
  directory not on the path) in a fresh temporary working directory, removed afterwards;
- `resource.setrlimit` before the code starts: CPU seconds (SIGXCPU), address space
  (MemoryError), size of any file written (EFBIG: stdout and stderr go to files, so this
  also caps a flood of output), number of processes (not enforced for root, hence the next
  layer);
- a bootstrap that installs an audit hook (PEP 578) before the user's code: it refuses every
  `socket.*` event (no network), opening a file for writing or removing/renaming one outside
  the working directory, process creation (`os.fork`, `os.system`, `os.exec*`,
  `os.posix_spawn`, `subprocess.Popen`: no fork bombs, no shell) and imports of the modules
  on DENIED_MODULES. Audit hooks cannot be removed once installed;
- a wall-clock timeout that kills the whole process group;
- the output read back is cut at `output_bytes`.
This is a guard against a small model's mistakes, not a boundary against a determined
attacker (run untrusted code in a container or VM for that).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DENIED_MODULES = ("socket", "_socket", "ssl", "subprocess", "_posixsubprocess", "ctypes",
                  "_ctypes", "multiprocessing", "_multiprocessing", "pty", "asyncio",
                  "urllib.request", "http.client", "ftplib", "smtplib", "telnetlib")
BLOCKED_EVENTS = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
                  "os.spawn", "subprocess.Popen", "os.kill", "os.killpg")
BOOTSTRAP = """
import os, sys
_DIR = os.path.realpath(os.getcwd())
_DENY = set(sys.argv[1].split(","))
_BLOCK = set(sys.argv[2].split(","))

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return True  # a file descriptor: already open
    return p == _DIR or p.startswith(_DIR + os.sep)

def _hook(event, args):
    if event.startswith("socket."):
        raise PermissionError("sandbox: network access is blocked (" + event + ")")
    if event in _BLOCK:
        raise PermissionError("sandbox: starting processes is blocked (" + event + ")")
    if event == "import" and (args[0] in _DENY or args[0].split(".")[0] in _DENY):
        raise ImportError("sandbox: importing " + args[0] + " is blocked")
    if event == "open" and isinstance(args[0], (str, bytes)):
        mode, flags = args[1] or "", args[2] or 0
        writes = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writes and not _inside(args[0]):
            raise PermissionError("sandbox: writing outside the working directory is blocked: "
                                  + os.fsdecode(args[0]))
    if event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink",
                 "os.link", "shutil.rmtree", "os.chmod", "os.truncate"):
        if any(isinstance(a, (str, bytes)) and not _inside(a) for a in args[:2]):
            raise PermissionError("sandbox: changing files outside the working directory is "
                                  "blocked (" + event + ")")

sys.addaudithook(_hook)
exec(compile(open("main.py").read(), "main.py", "exec"))
"""


@dataclass
class Limits:
    """What one run may use."""

    seconds: float = 10.0  # wall clock
    cpu_seconds: int = 10
    memory_bytes: int = 512 * 2**20  # address space
    file_bytes: int = 16 * 2**20  # any one file written, stdout and stderr included
    processes: int = 64
    output_bytes: int = 8_000  # of stdout (and of stderr) read back


@dataclass
class RunResult:
    """What a run printed and why it stopped (`stopped` is empty for a normal exit)."""

    stdout: str
    stderr: str
    returncode: int
    seconds: float
    stopped: list[str] = field(default_factory=list)

    def observation(self) -> str:
        """The text the model reads: the output, the error's last lines and any limit hit."""
        parts = [self.stdout.rstrip()] if self.stdout.strip() else []
        if self.returncode != 0 and self.stderr.strip():
            parts.append("stderr:\n" + "\n".join(self.stderr.rstrip().splitlines()[-6:]))
        parts += [f"[sandbox] {s}" for s in self.stopped]
        return "\n".join(parts) if parts else "(no output; print what you want to see)"


def run_python(code: str, limits: Limits | None = None) -> RunResult:
    """Run `code` in a fresh temporary directory under `limits`."""
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="lmforge-sandbox-") as tmp:
        work = Path(tmp)
        (work / "main.py").write_text(code, encoding="utf-8")
        out_path, err_path = work / ".stdout", work / ".stderr"
        began = time.perf_counter()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, ",".join(DENIED_MODULES),
                 ",".join(BLOCKED_EVENTS)],
                cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=_environment(work), start_new_session=True,
                preexec_fn=lambda: _set_limits(limits))
            timed_out = _wait(proc, limits.seconds)
        seconds = time.perf_counter() - began
        stdout, cut_out = _read(out_path, limits.output_bytes)
        stderr, cut_err = _read(err_path, limits.output_bytes)
    stopped = _reasons(proc.returncode, timed_out, stderr, limits)
    if cut_out or cut_err:
        stopped.append(f"output cut at {limits.output_bytes:,} bytes")
    return RunResult(stdout, stderr, proc.returncode, seconds, stopped)


def _environment(work: Path) -> dict[str, str]:
    # one thread per numerical library: the process limit counts threads too
    return {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _set_limits(limits: Limits) -> None:
    """In the child before exec: the resource limits (PEP 578 hooks come after)."""
    cpu = max(1, int(limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait for the process; past `seconds`, kill its whole group. True if it was killed."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _read(path: Path, limit: int) -> tuple[str, bool]:
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def _reasons(returncode: int, timed_out: bool, stderr: str, limits: Limits) -> list[str]:
    """Which limit or guard stopped the run, in words."""
    if timed_out:
        return [f"stopped after the wall-clock limit of {limits.seconds:g} s"]
    reasons = []
    if returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL:
        reasons.append(f"stopped at the CPU time limit of {limits.cpu_seconds} s")
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead
    if returncode == -signal.SIGXFSZ or "File too large" in stderr:
        reasons.append(f"stopped at the file size limit of {limits.file_bytes:,} bytes "
                       "(output included)")
    if "MemoryError" in stderr:
        reasons.append(f"ran out of its memory limit of {limits.memory_bytes // 2**20} MiB")
    reasons += sorted({line.split("sandbox: ", 1)[1] for line in stderr.splitlines()
                       if "sandbox: " in line})
    return reasons
