"""Where Knative objects come from: a watched YAML file or folder, or a Kubernetes cluster.

Every source has one shape (`base.Source`): `run(sink, ready)` loads the first
complete state into the sink, sets `ready`, then submits each later change.
"""

from .base import Changes, Sink, Source

__all__ = ["Changes", "Sink", "Source"]
