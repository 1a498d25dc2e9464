"""The persistent compilation cache of a job (gemb/runtime/compilation_cache.py), in a fresh
process: it is global JAX state, so the test must not turn it on for the rest of the suite."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp
    import ml_collections
    from gemb.runtime import compilation_cache
    workdir = sys.argv[1]
    config = ml_collections.ConfigDict({"compilation_cache_dir": "",
                                        "compilation_cache_min_seconds": 0.0})
    directory = compilation_cache.enable(config, workdir)
    assert directory == os.path.join(workdir, "jax_cache"), directory
    # A second call (another stage) keeps the cache that is on.
    config.compilation_cache_dir = "/elsewhere"
    assert compilation_cache.enable(config, workdir) == directory
    jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
    print(len(os.listdir(directory)))
""")


def _run(workdir):
  out = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir)], cwd=ROOT, check=True,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
  return int(out.stdout.strip().splitlines()[-1])


def test_programs_land_in_workdir_cache(tmp_path):
  assert _run(tmp_path) >= 1
