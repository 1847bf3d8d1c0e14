"""Every module that declares tables, imported together so the metadata is complete.

Migrations and ``Database.create_all`` import this; a feature that adds a table adds its
module here (and an Alembic revision).
"""

from core import (
    api_tokens,
    assessment,
    booking,
    broadcasts,
    checkins,
    escalation,
    models,
    reports,
    rooms,
)

__all__ = [
    "api_tokens",
    "assessment",
    "booking",
    "broadcasts",
    "checkins",
    "escalation",
    "models",
    "reports",
    "rooms",
]
