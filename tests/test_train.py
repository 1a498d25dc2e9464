"""The trainer end to end, in subprocesses running the real launcher on tests/tiny_config.py.

Each test compares against an independent reference: an uninterrupted run, a single-process run,
or a numpy average.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "tiny_config.py")


def _env(devices: int, cache_dir) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  # Every run compiles the same steps: share the compilations through the persistent cache.
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = ROOT
  return env


def _command(workdir, *flags):
  return [sys.executable, "-m", "launch.main", f"--config={CONFIG}", f"--workdir={workdir}",
          *flags]


def _run(workdir, env, *flags):
  result = subprocess.run(_command(workdir, *flags), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def _losses(workdir) -> dict:
  """(stage, step) -> loss; a step logged twice (before a kill and after) keeps its last value."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        losses[(record["stage"], record["step"])] = record["loss"]
  return losses


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("reference")
  _run(workdir, _env(8, cache_dir))
  return workdir


def test_killed_and_restarted_run_equals_uninterrupted_run(reference_run, tmp_path, cache_dir):
  expected = _losses(reference_run)
  kill_after = random.randrange(1, len(expected))  # a random step of either training stage
  print(f"killing after {kill_after} logged steps")
  workdir = tmp_path / "killed"
  env = _env(8, cache_dir)
  process = subprocess.Popen(_command(workdir, ), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  _run(workdir, env)  # the same command again continues from the last checkpoint
  resumed = _losses(workdir)
  assert resumed.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(resumed[key], expected[key], rtol=0, atol=1e-6, err_msg=str(key))


@pytest.mark.slow  # two processes compiling and talking over gloo: minutes on 2 cores
def test_two_processes_give_the_losses_of_one(reference_run, tmp_path, cache_dir):
  """2 processes x 4 devices (jax.distributed on 127.0.0.1) == 1 process x 8 devices."""
  port = random.randrange(20000, 40000)
  workdir = tmp_path / "two_hosts"
  env = _env(4, cache_dir)
  # Each process logs to a file: with pipes, the one not being read fills its pipe, blocks
  # in a write and leaves the other waiting at orbax's cross-process barrier forever.
  logs = [tmp_path / f"process{i}.log" for i in range(2)]
  processes = []
  for i, log in enumerate(logs):
    with open(log, "w") as out:
      processes.append(subprocess.Popen(
          _command(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                   f"--process_id={i}"), cwd=ROOT, env=env, stdout=out,
          stderr=subprocess.STDOUT, text=True))
  for process, log in zip(processes, logs):
    process.wait(timeout=1800)
    assert process.returncode == 0, log.read_text()[-4000:]
  expected, got = _losses(reference_run), _losses(workdir)
  assert got.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=str(key))


def test_soup_is_the_average_of_its_ingredients(reference_run):
  import jax
  from gemb import sharding
  from gemb.train import checkpoints
  sys.path.insert(0, os.path.dirname(CONFIG))
  import tiny_config
  config = tiny_config.get_config()
  one_device = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  load = lambda ref: checkpoints.load_encoder(
      config.model, one_device, checkpoints.resolve(ref, str(reference_run)))[1]
  soup = load("soup")
  ingredients = [load(ref) for ref in config.stages.soup.ingredients]
  assert len(ingredients) == 2
  for got, *parts in zip(jax.tree.leaves(soup), *map(jax.tree.leaves, ingredients)):
    np.testing.assert_allclose(np.asarray(got), np.mean([np.asarray(p) for p in parts], axis=0),
                               rtol=1e-6, atol=1e-7)
  assert not np.allclose(*[np.asarray(jax.tree.leaves(i)[0]) for i in ingredients])
