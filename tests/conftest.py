"""Test set-up: every test process sees 8 simulated CPU devices.

XLA reads XLA_FLAGS once, when jax initialises its backend, so this must run before
any test imports jax. Single-device tests simply use unsharded arrays (device 0).
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
