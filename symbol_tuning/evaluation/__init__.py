"""Evaluation: suites, scoring and the evaluator, loading checkpoints for evaluation, and reports."""
