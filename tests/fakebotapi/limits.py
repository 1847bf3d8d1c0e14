"""Telegram-like flood limits with an injectable monotonic clock."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float = -1.0
    updated: float = 0.0

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0 if available now); refills first."""
        if self.tokens < 0:
            self.tokens, self.updated = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


@dataclass
class SlidingWindow:
    limit: int
    window: float
    events: deque[float] = field(default_factory=deque)

    def wait_time(self, now: float) -> float:
        while self.events and self.events[0] <= now - self.window:
            self.events.popleft()
        if len(self.events) < self.limit:
            return 0.0
        return self.events[0] + self.window - now

    def take(self, now: float) -> None:
        self.events.append(now)


@dataclass
class LimitConfig:
    global_per_second: float = 30
    per_chat_per_second: float = 1
    per_chat_burst: int = 3
    per_group_per_minute: int = 20


class RateLimiter:
    """Decides whether a message-sending call to ``chat_id`` must get a 429.

    * global: token bucket of ``global_per_second`` (burst the same);
    * private chats: token bucket of ``per_chat_per_second`` with burst ``per_chat_burst``;
    * groups/channels (negative ids): at most ``per_group_per_minute`` in any 60 s window.
    """

    def __init__(self, config: LimitConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self._global = TokenBucket(config.global_per_second, config.global_per_second)
        self._chats: dict[int, TokenBucket] = {}
        self._groups: dict[int, SlidingWindow] = {}

    def check(self, chat_id: int) -> tuple[str, int] | None:
        """None if allowed (and counted), else (which limit, retry_after seconds)."""
        now = self.clock()
        waits: list[tuple[str, float]] = [("global", self._global.wait_time(now))]
        if chat_id < 0:
            window = self._groups.setdefault(
                chat_id, SlidingWindow(self.config.per_group_per_minute, 60.0)
            )
            waits.append(("group", window.wait_time(now)))
        else:
            bucket = self._chats.setdefault(
                chat_id,
                TokenBucket(self.config.per_chat_burst, self.config.per_chat_per_second),
            )
            waits.append(("chat", bucket.wait_time(now)))
        worst = max(waits, key=lambda item: item[1])
        if worst[1] > 0:
            return worst[0], max(1, math.ceil(worst[1]))
        self._global.take()
        if chat_id < 0:
            self._groups[chat_id].take(now)
        else:
            self._chats[chat_id].take()
        return None
