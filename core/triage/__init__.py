"""Triage: reads each message a resident sends for risk (pure Python, data-driven)."""

from core.triage.cli import cli_main
from core.triage.engine import Triage, TriageContext, TriageResult, to_signal

__all__ = ["Triage", "TriageContext", "TriageResult", "cli_main", "to_signal"]
