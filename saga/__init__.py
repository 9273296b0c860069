"""The saga orchestrator: settles transfers and trades across account, risk and trade.

    service = SagaService()                 # for the host: starter, workers, /v1/sagas
    SETTLE_LEGS                             # the one definition, as data
    next_action(definition, state, now)     # the pure decision the workers follow
"""

from saga.app import SagaService
from saga.contracts import SagaStatus
from saga.decisions import RetryPolicy, after_outcome, next_action
from saga.definition import SETTLE_LEGS, Participants, SagaDefinition, Step
from saga.orchestrator import Orchestrator
from saga.state import SagaState, fold

__all__ = [
    "SETTLE_LEGS",
    "Orchestrator",
    "Participants",
    "RetryPolicy",
    "SagaDefinition",
    "SagaService",
    "SagaState",
    "SagaStatus",
    "Step",
    "after_outcome",
    "fold",
    "next_action",
]
