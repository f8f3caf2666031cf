"""Simulated users of a product and what they do each day: sign up, log in,
buy, invite. Deterministic for a seed. The demo replays the days that end
today: events carry the simulated day's time, and each day takes a moment of
wall time, so that the workflows' timers ("3 days" = PT3S) keep up."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PLANS = (("free", 0.6), ("pro", 0.3), ("team", 0.1))
COUNTRIES = ("DE", "FR", "US", "BR", "IN", "JP", "GB", "ES")
COMPANY_SIZES = ("1-10", "11-50", "51-200", "201-1000")


@dataclass
class Person:
    email: str
    plan: str
    country: str
    company_size: str
    signup_day: int
    # Chance to log in on a day, right after signing up; it fades.
    engagement: float
    user_id: str = ""
    sessions: int = 0
    last_seen: datetime | None = None
    purchased: bool = False
    invited: bool = False

    def attributes(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "plan": self.plan,
            "country": self.country,
            "company_size": self.company_size,
            "sessions": self.sessions,
        }
        if self.last_seen is not None:
            data["last_seen"] = self.last_seen.isoformat().replace("+00:00", "Z")
        return data


@dataclass(frozen=True)
class Happening:
    """One thing a person did: the event type and when."""

    person: Person
    event_type: str
    at: datetime


@dataclass
class Day:
    number: int
    date: datetime
    signups: list[Person] = field(default_factory=list)
    # People whose attributes changed (sessions, last seen) this day.
    active: list[Person] = field(default_factory=list)
    happenings: list[Happening] = field(default_factory=list)


class Simulation:
    def __init__(self, users: int, days: int, seed: int, tag: str, now: datetime) -> None:
        self._random = random.Random(seed)
        self.days = days
        self.now = now
        self.first_day = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days - 1)
        self.people = [self._person(n, tag) for n in range(users)]

    def _person(self, n: int, tag: str) -> Person:
        draw = self._random
        plan = draw.choices([p for p, _ in PLANS], [w for _, w in PLANS])[0]
        return Person(
            email=f"demo-{tag}-{n}@example.com",
            plan=plan,
            country=draw.choice(COUNTRIES),
            company_size=draw.choice(COMPANY_SIZES),
            # More people sign up as the product grows.
            signup_day=min(self.days - 1, int(self.days * draw.random() ** 0.8)),
            engagement=draw.uniform(0.15, 0.95) * (1.2 if plan != "free" else 1.0),
        )

    def replay(self) -> Iterator[Day]:
        for number in range(self.days):
            yield self._day(number)

    def _day(self, number: int) -> Day:
        date = self.first_day + timedelta(days=number)
        day = Day(number, date)
        for person in self.people:
            if person.signup_day == number:
                day.signups.append(person)
                day.happenings.append(Happening(person, "signup", self._moment(date)))
            elif person.signup_day < number:
                self._live(person, day)
        day.happenings.sort(key=lambda happening: happening.at)
        return day

    def _live(self, person: Person, day: Day) -> None:
        draw = self._random
        fading = 0.93 ** (day.number - person.signup_day)
        if draw.random() >= person.engagement * fading:
            return
        at = self._moment(day.date)
        person.sessions += 1
        person.last_seen = at
        day.active.append(person)
        day.happenings.append(Happening(person, "login", at))
        if not person.purchased and person.sessions >= 3 and draw.random() < 0.08:
            person.purchased = True
            day.happenings.append(Happening(person, "purchase", at + timedelta(minutes=5)))
        elif person.purchased and not person.invited and draw.random() < 0.15:
            person.invited = True
            day.happenings.append(Happening(person, "invite", at + timedelta(minutes=9)))

    def _moment(self, date: datetime) -> datetime:
        """A random moment of the day, never after now (the last day is today)."""
        end = min(date + timedelta(days=1), self.now - timedelta(minutes=15))
        span = max(0.0, (end - date).total_seconds())
        return date + timedelta(seconds=self._random.uniform(0, span))
