"""Where planning stands for one client and one type: what the next plan must look at.

Planning costs what changed (see `plan.py`): the next plan evaluates the names the
cache's changelog lists since `planned_at`, plus `recheck`. Some changes reach
every name at once (the wildcard starting or ending, a Delta reconnect saying
what it holds); then the next plan looks at all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class PlanCursor:
    # Names to evaluate on the next plan even if the snapshot did not change them:
    # names just asked for, route tables held back, clusters kept for old routes,
    # endpoints to resend.
    recheck: set[str] = field(default_factory=set)
    # The snapshot counter of this type when it was last planned (-1: never).
    planned_at: int = -1
    # The next plan looks at every name, not only the changed ones.
    everything: bool = True

    def look_at(self, names: Iterable[str]) -> None:
        self.recheck.update(names)

    def look_at_everything(self) -> None:
        self.everything = True

    def since(self) -> int | None:
        """The snapshot counter after which changed names are enough; None: look at all."""
        if self.everything or self.planned_at < 0:
            return None
        return self.planned_at

    def planned(self, counter: int, recheck: Iterable[str]) -> None:
        """A plan was made at `counter`; `recheck` is what it says to look at again."""
        self.recheck = set(recheck)
        self.planned_at = counter
        self.everything = False
