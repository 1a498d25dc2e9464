"""Test set-up: every test process sees 8 simulated CPU devices.

XLA reads XLA_FLAGS once, when jax initialises its backend, so this must run before
any test imports jax. Single-device tests simply use unsharded arrays (device 0).
"""
import os

# A collective waits for all 8 simulated devices; on 2 busy cores one can come late, and past
# XLA's rendezvous termination timeout the process aborts, so it is raised.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_cpu_collective_call_terminate_timeout_seconds=1800"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
