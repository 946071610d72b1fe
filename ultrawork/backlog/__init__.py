"""The backlog: issues with an event-sourced history, a formal state machine and optimistic locking.

Plain Python (no Prefect): ``flows/sweep.py`` and the ``ultrawork issues`` commands build on it.
"""

from .errors import (BacklogError, ConcurrencyError, GuardFailed, IllegalTransition, IssueFileError, IssueNotFound,
                     UnknownLabelError, UnknownStateError)
from .issue import Issue, IssueSpec
from .machine import OUTCOME_TRIGGERS, STATES, TRANSITIONS, IssueEvent, Transition, allowed, fire, replay
from .store import Backlog, FileBacklog
from .sweeping import (Claim, Skip, claim_eligible, default_backlog, eligible, open_backlog,
                       outcome_trigger)

__all__ = [
    "Backlog", "BacklogError", "Claim", "ConcurrencyError", "FileBacklog", "GuardFailed", "IllegalTransition",
    "Issue", "IssueEvent", "IssueFileError", "IssueNotFound", "IssueSpec", "OUTCOME_TRIGGERS", "STATES", "Skip",
    "TRANSITIONS", "Transition", "UnknownLabelError", "UnknownStateError", "allowed", "claim_eligible",
    "default_backlog", "eligible", "fire", "open_backlog", "outcome_trigger", "replay",
]
