"""gemb/runtime/allocator.py: when an entry point re-executes itself under tcmalloc, and with
what."""
import os
import subprocess
import sys

import pytest

from gemb.runtime import allocator


class Exec(Exception):
  """Raised by the fake os.execve, so use_tcmalloc stops where the real one would."""


@pytest.fixture
def execve(monkeypatch):
  calls = []

  def fake(path, argv, env):
    calls.append((path, argv, env))
    raise Exec
  monkeypatch.setattr(os, "execve", fake)
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.delenv("GEMB_ALLOCATOR", raising=False)
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  return calls


def test_reexecutes_the_same_command_with_tcmalloc_preloaded(execve, monkeypatch):
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
  monkeypatch.setenv("LD_PRELOAD", "libother.so")
  with pytest.raises(Exec):
    allocator.use_tcmalloc()
  [(path, argv, env)] = execve
  assert path == sys.executable and argv == sys.orig_argv
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:libother.so"  # the user's preload kept
  assert env["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("setting", [{"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"},
                                     {"GEMB_ALLOCATOR": "system"}])
def test_does_not_reexecute_when_preloaded_or_told_not_to(execve, monkeypatch, setting):
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
  for key, value in setting.items():
    monkeypatch.setenv(key, value)
  allocator.use_tcmalloc()
  assert not execve


def test_without_tcmalloc_it_warns_and_goes_on(execve, monkeypatch):
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
  warnings = []
  monkeypatch.setattr(allocator.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  allocator.use_tcmalloc()
  assert not execve and "libtcmalloc-minimal4" in warnings[0]


def test_an_unknown_allocator_is_an_error_naming_the_variable(execve, monkeypatch):
  monkeypatch.setenv("GEMB_ALLOCATOR", "jemalloc")
  with pytest.raises(ValueError, match="GEMB_ALLOCATOR='jemalloc'"):
    allocator.use_tcmalloc()


@pytest.mark.skipif(allocator.find_tcmalloc() is None or not sys.platform.startswith("linux"),
                    reason="tcmalloc is not installed here")
def test_a_real_reexecution_runs_the_program_once_under_tcmalloc():
  program = ("import sys; from gemb.runtime import allocator; print('start', flush=True); "
             "allocator.use_tcmalloc(); print(allocator.in_use(), sys.argv[1:])")
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GEMB_ALLOCATOR")}
  out = subprocess.run([sys.executable, "-c", program, "--flag=1"], env=env, check=True,
                       capture_output=True, text=True).stdout
  # The first run prints 'start' and is replaced; the second starts again, and goes on.
  assert out.splitlines() == ["start", "start", "tcmalloc ['--flag=1']"]
  plain = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True,
                         text=True, env=dict(env, GEMB_ALLOCATOR="system")).stdout
  assert plain.splitlines() == ["start", "system []"]
