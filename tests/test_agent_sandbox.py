"""The python tool's sandbox blocks and reports each thing it guards against."""

from __future__ import annotations

import pytest

from lmforge.agent.sandbox import Limits, run_python

FAST = Limits(seconds=5, cpu_seconds=2, memory_bytes=256 * 2**20, file_bytes=2**20,
              output_bytes=2_000)


def test_a_normal_run_prints_and_writes_inside():
    r = run_python("open('x.txt', 'w').write('hi')\nprint(open('x.txt').read(), 6 * 7)", FAST)
    assert (r.returncode, r.stopped, r.observation()) == (0, [], "hi 42")


@pytest.mark.parametrize("code, reason", [
    ("import socket", "importing socket is blocked"),
    ("import urllib.request", "importing urllib.request is blocked"),
    ("import ctypes", "importing ctypes is blocked"),
    ("import subprocess\nsubprocess.run(['ls'])", "importing subprocess is blocked"),
    ("import os\nos.system('echo hi')", "starting processes is blocked (os.system)"),
    ("import os\nwhile True:\n    os.fork()", "starting processes is blocked (os.fork)"),
    ("open('/tmp/lmforge-sandbox-escape.txt', 'w').write('x')",
     "writing outside the working directory is blocked: /tmp/lmforge-sandbox-escape.txt"),
    ("open('../escape.txt', 'a')", "writing outside the working directory is blocked"),
    ("import os\nos.remove('/etc/hostname')", "changing files outside the working directory"),
])
def test_guards_block_and_report(code, reason):
    r = run_python(code, FAST)
    assert r.returncode != 0
    assert any(reason in s for s in r.stopped), r.observation()
    assert reason in r.observation()


def test_network_is_blocked_even_through_a_preimported_module():
    code = "import importlib\ns = importlib.import_module('_socket')"
    assert "importing _socket is blocked" in run_python(code, FAST).observation()


def test_infinite_loop_hits_the_cpu_limit():
    r = run_python("while True:\n    pass", FAST)
    assert "CPU time limit of 2 s" in r.observation()


def test_sleeping_forever_hits_the_wall_clock():
    r = run_python("import time\ntime.sleep(60)", Limits(seconds=1))
    assert "wall-clock limit of 1 s" in r.observation() and r.seconds < 10


def test_memory_hog():
    r = run_python("x = bytearray(1024 * 2**20)", FAST)
    assert "memory limit of 256 MiB" in r.observation()


def test_huge_output_is_cut():
    r = run_python("while True:\n    print('y' * 1000)", FAST)
    assert len(r.stdout) == 2_000
    assert "output cut at 2,000 bytes" in r.observation()
    assert "file size limit" in r.observation()


def test_an_exception_shows_its_last_lines():
    obs = run_python("print('before')\n1 / 0", FAST).observation()
    assert obs.startswith("before\nstderr:") and "ZeroDivisionError: division by zero" in obs
