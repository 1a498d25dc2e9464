"""Distilling domain specialists into one universal embedding model (see gemb/proj/distill/run.py).

  run.py         the experiment end to end: specialists, fused baseline and students, each
                 trained by gemb.train.trainer (a student's stage is a distillation stage, its
                 teachers in gemb/train/teachers.py), then the report
  evaluation.py  per-domain retrieval of every model
"""
