"""One exception hierarchy for every error a user can act on.

Each message names the value that failed, the rule it broke and what to do next.
"""


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A setting is missing or invalid; raised before any work starts."""

    def __init__(self, name: str, value: object, rule: str):
        self.name = name
        self.value = value
        self.rule = rule
        super().__init__(f"invalid value for {name!r}: {value!r} ({rule})")


class DataError(PipelineError):
    """Input data is missing, unreadable or does not match its manifest."""


class StoreError(PipelineError):
    """The artifact store failed or contains something other than expected."""


class TrainingError(PipelineError):
    """Training cannot continue (for example a loss became non-finite)."""


class EvaluationError(PipelineError):
    """Evaluation cannot produce trustworthy metrics."""
