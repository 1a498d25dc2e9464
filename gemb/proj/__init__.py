"""Applications built on the gemb core, apart from it: distillation and cold-start exploration."""
