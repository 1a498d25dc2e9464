"""What a run prints for a person: one progress line per window with an ETA, no library chatter."""
import subprocess
import sys

from gemb.train import metrics


def test_progress_line_shows_the_step_the_loss_the_pace_and_the_eta_at_that_pace():
  line = metrics.progress_line("finetune", 200, 300, dict(
      loss=2.3141, temperature=0.04961, lr=2.63e-4, steps_per_s=4.0, examples_per_s=256.4,
      mfu=0.3121, grad_norm=1.5))
  assert line == ("[finetune] step 200/300  loss 2.314  temp 0.0496  lr 0.00026  4 steps/s  "
                  "256 ex/s  mfu 31.2%  eta 25s")
  assert "eta" not in metrics.progress_line("finetune", 300, 300, dict(loss=1.0, steps_per_s=4.0))


def test_durations_read_as_seconds_minutes_or_hours():
  assert [metrics.duration(s) for s in (0.4, 59.4, 60, 185, 3599, 7620)] == [
      "0s", "59s", "1m00s", "3m05s", "59m59s", "2h07m"]


_PROGRAM = """
import sys
from absl import app, logging
from launch import main as launch_main

def run(argv):
  launch_main.quiet_libraries()
  logging.info("library chatter")
  logging.warning("a warning")

sys.argv = ["main", "--config=tests/tiny_config.py", "--workdir=/tmp/unused"] + sys.argv[1:]
app.run(run)
"""


def _main_output(*flags: str) -> str:
  result = subprocess.run([sys.executable, "-c", _PROGRAM, *flags], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  return result.stdout + result.stderr


def test_library_info_logs_are_off_unless_verbosity_asks_for_them():
  quiet = _main_output()
  assert "library chatter" not in quiet and "a warning" in quiet
  assert "library chatter" in _main_output("--verbosity=0")
