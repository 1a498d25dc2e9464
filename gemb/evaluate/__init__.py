"""Evaluation of any embedding function: one module per task type, each with an `Evaluator`.

`registry.get(type_name)` finds an evaluator class by name; `suite.run_suite` runs a dict of them
into flat `<suite>/<task>/<metric>` results; `report` writes them as JSON, markdown and plots.
"""
