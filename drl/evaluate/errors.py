"""The evaluation stages' error type (kept apart so the CLI can catch it without importing torch-fidelity)."""


class EvaluationError(ValueError):
    """An evaluation input is missing or inconsistent; the message names it and the fix."""
