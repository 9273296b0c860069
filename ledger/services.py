"""The domain services this build of the ledger can run, by name."""

from __future__ import annotations

from account_service.app import AccountService
from ledger.host import Service
from risk_service.app import RiskService
from saga.app import SagaService
from trade_service.app import TradeService


def available_services() -> dict[str, Service]:
    """Every domain service, keyed by the name `ledger serve` takes."""
    return {
        "account": AccountService(),
        "risk": RiskService(),
        "trade": TradeService(),
        "saga": SagaService(),
    }
