"""A config file read by its path, as `--config=` names it (for commands outside launch.main)."""
import importlib.util


def load(spec: str):
  """`'configs/x.py'` or `'configs/x.py:arg'` -> that file's get_config(arg) (None without one)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("gemb_loaded_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
