"""Distilling domain specialists into one universal embedding model (see gemb/proj/distill/run.py).

  teachers.py    specialist embeddings of a batch: a frozen gemb encoder, or a precomputed table
  step.py        the distillation objective (KL / L2 of in-batch similarities, + contrastive)
  train.py       the student's resumable training loop
  evaluation.py  per-domain retrieval of every model
  run.py         the experiment end to end and its report
"""
