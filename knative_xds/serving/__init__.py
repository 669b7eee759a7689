"""Knative Serving's controllers, locally: Services and Configurations in, Revisions and Routes out.

On a cluster Knative turns a Service into a Configuration, a Revision per
template and a Route; here `reconcile` does the same without a cluster, and
`RevisionHistory` keeps what the API server would (the revisions made so far)
in SQLite, so revision numbers survive a restart. The output is the Revision,
Configuration and Route objects the model already reads, as plain dicts.
`ServingStage` (stage.py) does it to what a source sends, on its way to the pipeline.
"""

from .history import FILE_NAME, HistoryError, NameTaken, RevisionHistory, default_state_dir
from .reconcile import Reconciled, StoredRevision, reconcile, removed, revision_object
from .spec import ServingSpec, is_serving, parse_serving
from .stage import ServingSource, ServingStage, history_for, reconciled_here
from .template import Limits, child_name

__all__ = [
    "FILE_NAME",
    "HistoryError",
    "Limits",
    "NameTaken",
    "Reconciled",
    "RevisionHistory",
    "ServingSource",
    "ServingSpec",
    "ServingStage",
    "StoredRevision",
    "child_name",
    "default_state_dir",
    "history_for",
    "is_serving",
    "parse_serving",
    "reconcile",
    "reconciled_here",
    "removed",
    "revision_object",
]
