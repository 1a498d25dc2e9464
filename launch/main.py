"""gemb's one entry point: `python -m launch.main --config=configs/x.py --workdir=DIR [--mode=...]`.

Only parses flags, starts multi-host JAX where there are several hosts, and hands the config to the
job it names (`config.job`): 'train' (staged training + evaluation), 'distill', or 'coldstart'.
The console shows progress lines only; `--verbosity=0` adds the libraries' INFO logs.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/smoke.py[:arg].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and evaluations go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "soup", "export"],
                  "train: run (or resume) every stage; eval: evaluate --checkpoint (default: the "
                  "last stage's latest); soup: run only the soup stages; export: write a serving "
                  "bundle (or with --format=hf, a Hugging Face folder) to --export_dir.")
flags.DEFINE_string("checkpoint", None, "For --mode=eval/export: a checkpoint reference "
                    "('stage', 'stage:step' or a path).")
flags.DEFINE_string("export_dir", None, "For --mode=export: where the serving bundle goes.")
flags.DEFINE_enum("format", "bundle", ["bundle", "hf"], "For --mode=export: 'bundle' (gemb's "
                  "serving bundle) or 'hf' (a sentence-transformers folder of a bert or gemma "
                  "backbone's text model, the other stems beside it).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 "
                    "(not needed on Cloud TPU or SLURM, where JAX finds it itself).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
  """Starts jax.distributed when this job spans several processes."""
  import jax
  explicit = FLAGS.coordinator_address is not None
  on_cluster = any(v in os.environ for v in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES",
                                             "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS"))
  if explicit:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif on_cluster and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
    jax.distributed.initialize()
  print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
        f"/ {jax.device_count()} global {jax.default_backend()} devices", flush=True)


def quiet_libraries() -> None:
  """Library INFO chatter (orbax's checkpoint steps, XLA's backend probing) off unless asked for
  with absl's own `--verbosity=0` (or `-v 1` for debug): the console is for progress lines."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def alias_config_items(argv: list[str]) -> list[str]:
  """`--config.items=X` (the cold-start catalogue) -> `--config.catalogue=X`: ConfigDict.items is
  a method, which ml_collections' override parser finds before any field of that name."""
  return ["--config.catalogue" + arg[len("--config.items"):]
          if arg == "--config.items" or arg.startswith("--config.items=") else arg for arg in argv]


def main(argv):
  del argv
  quiet_libraries()
  config = FLAGS.config
  job = config.get("job", "train")
  if job == "coldstart":
    from gemb.proj.coldstart import report
    report.run(config, FLAGS.workdir)
    return
  initialize_distributed()
  if job == "distill":
    from gemb.proj.distill import run as distill_run
    distill_run.run(config, FLAGS.workdir)
    return
  if job != "train":
    raise app.UsageError(f"config.job={job!r}: use 'train', 'distill' or 'coldstart'")
  from gemb.runtime import compilation_cache
  from gemb.train import trainer
  compilation_cache.enable(config, FLAGS.workdir)
  if FLAGS.mode == "train":
    trainer.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "soup":
    trainer.train_and_evaluate(config, FLAGS.workdir, only_soups=True)
  elif FLAGS.mode == "eval":
    trainer.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint)
  elif FLAGS.mode == "export":
    if not FLAGS.export_dir:
      raise app.UsageError("--mode=export needs --export_dir")
    if FLAGS.format == "hf":
      from gemb.export import hf
      hf.export(config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.export_dir)
    else:
      from gemb.export import bundle
      bundle.export(config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.export_dir)


if __name__ == "__main__":
  from gemb.runtime import allocator
  allocator.use_tcmalloc()  # re-executes this command under tcmalloc, once (see its docstring)
  sys.argv[:] = alias_config_items(sys.argv)  # config_flags reads its overrides from sys.argv
  app.run(main)
