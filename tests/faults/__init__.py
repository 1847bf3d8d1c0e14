"""Fault tests: SIGKILL, a failing Telegram, a vanished database, several processes."""
