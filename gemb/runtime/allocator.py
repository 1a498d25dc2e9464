"""The process's memory allocator: tcmalloc where it is installed, for ~1.5x faster CPU steps.

XLA's CPU runtime allocates each step's temporaries afresh and frees them after the step. glibc
serves allocations this large with mmap and frees them with munmap, so every step faults its
temporaries in again, 4 KiB at a time: a toyworld pre-finetuning step on 2 cores took 192,000
page faults and ~0.4 s of kernel time for 0.8 s of wall time. tcmalloc keeps freed memory for
the next step: no faults, and 1.5x the toyworld steps/s (README, "Training: what a run does
and prints").

A process chooses its allocator when it starts, so `use_tcmalloc()` re-executes the entry point
(same pid, same arguments) with tcmalloc in LD_PRELOAD, before it does any work. launch/venv.sh
installs Debian's libtcmalloc-minimal4 where it can. GEMB_ALLOCATOR=system keeps glibc's.
"""
from __future__ import annotations

import ctypes.util
import os
import sys

from absl import logging

LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # ctypes.util.find_library names, preferred first
CHOICES = ("tcmalloc", "system")
# tcmalloc prints a stack trace to stderr for each allocation over 1 GiB by default; a training
# run makes such allocations on purpose.
REPORT_THRESHOLD = str(1 << 40)


def find_tcmalloc() -> str | None:
  """The soname of an installed tcmalloc (e.g. 'libtcmalloc_minimal.so.4'), or None."""
  for name in LIBRARIES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def in_use() -> str:
  """'tcmalloc' when this process has tcmalloc loaded, else 'system'."""
  try:
    with open("/proc/self/maps") as maps:
      return "tcmalloc" if "libtcmalloc" in maps.read() else "system"
  except OSError:  # not Linux
    return "system"


def use_tcmalloc() -> None:
  """Re-executes this process under tcmalloc, when it is installed and not loaded yet.

  Call it first thing in an entry point's `if __name__ == "__main__":` block. It returns without
  re-executing when GEMB_ALLOCATOR=system, off Linux, when LD_PRELOAD already names tcmalloc
  (so it re-executes at most once), or when no tcmalloc is installed (with a warning).
  """
  choice = os.environ.get("GEMB_ALLOCATOR", "tcmalloc")
  if choice not in CHOICES:
    raise ValueError(f"GEMB_ALLOCATOR={choice!r}: use one of {CHOICES}")
  preload = os.environ.get("LD_PRELOAD", "")
  if choice == "system" or not sys.platform.startswith("linux") or "tcmalloc" in preload:
    return
  library = find_tcmalloc()
  if library is None:
    logging.warning("tcmalloc is not installed: on the CPU backend, training steps run ~1.5x "
                    "slower without it (gemb/runtime/allocator.py says why). On Debian/Ubuntu: "
                    "apt-get install libtcmalloc-minimal4. GEMB_ALLOCATOR=system silences this.")
    return
  env = dict(os.environ, LD_PRELOAD=":".join(p for p in (library, preload) if p),
             TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=REPORT_THRESHOLD)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
