"""Every module that declares tables, imported together so the metadata is complete.

Migrations and ``Database.create_all`` import this; a feature that adds a table adds its
module here (and an Alembic revision).
"""

from core import assessment, escalation, models

__all__ = ["assessment", "escalation", "models"]
