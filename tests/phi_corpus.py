"""A corpus of realistic events and metric samples full of identifiers, for
the privacy tests: names, e-mail addresses, phone numbers, SSNs, dates of
birth, street addresses, record numbers, IP addresses, URLs with queries,
device ids and coordinates, under many field-name spellings, nested, in
arrays, inside free text, in event names, messageIds and metric tags.

Deterministic (one seed), so a failure names the same value every run.
Every identifier carries a random part, so finding it anywhere means it
leaked from here, not that it happens to occur in a library's bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: Field-name spellings of the same identifiers: what apps actually send.
SPELLINGS = {
    "name": ["name", "firstName", "lastName", "full_name", "patient_name", "Name", "username", "display-name"],
    "email": ["email", "e-mail", "emailAddress", "EMAIL", "contact_email", "mail"],
    "phone": ["phone", "phoneNumber", "phone_number", "mobile", "Tel", "cell-phone"],
    "ssn": ["ssn", "SSN", "social_security_number", "socialSecurity"],
    "dob": ["dob", "birthday", "dateOfBirth", "birth_date", "DOB"],
    "address": ["address", "street", "homeAddress", "address_line1"],
    "zip": ["zip", "zip_code", "postalCode", "ZIP"],
    "mrn": ["mrn", "medicalRecordNumber", "chart_id", "record"],
    "ip": ["ip", "ipAddress", "client_ip"],
}
FIRST = ["Jane", "Omar", "Li", "Maria", "Kofi", "Anna", "Ravi", "Elena"]
LAST = ["Doe", "Haddad", "Chen", "Garcia", "Mensah", "Novak", "Iyer", "Rossi"]
STREETS = ["Main Street", "Oak Avenue", "Elm Road", "Cedar Lane"]
#: Distinct identifiers per kind.
POOL = 25


@dataclass
class Corpus:
    """What was generated, and every identifier in it (to look for later)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    segment: list[dict[str, Any]] = field(default_factory=list)
    sdk_calls: list[dict[str, Any]] = field(default_factory=list)
    bad_samples: list[dict[str, Any]] = field(default_factory=list)
    good_samples: list[dict[str, Any]] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)


class Generator:
    def __init__(self, seed: int = 21) -> None:
        self.rng = random.Random(seed)
        self.corpus = Corpus()
        self.pools: dict[str, list[str]] = {}

    # -- identifiers -----------------------------------------------------------
    def _digits(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(n))

    def _keep(self, value: str) -> str:
        self.corpus.identifiers.add(value)
        return value

    def identifier(self, kind: str) -> str:
        """One of a pool of identifiers of ``kind``: people recur across
        events, as they do in an app (and a small pool keeps the search of
        every byte of Redis for every identifier quick)."""
        pool = self.pools.setdefault(kind, [])
        if len(pool) < POOL:
            pool.append(self._new(kind))
            return pool[-1]
        return self.rng.choice(pool)

    def _new(self, kind: str) -> str:
        rng = self.rng
        token = self._digits(4)
        if kind == "name":
            return self._keep(f"{rng.choice(FIRST)} {rng.choice(LAST)}{token}")
        if kind == "email":
            return self._keep(f"{rng.choice(FIRST).lower()}.{token}@example-clinic.org")
        if kind == "phone":
            return self._keep(f"+1 555-{self._digits(3)}-{token}")
        if kind == "ssn":
            return self._keep(f"{rng.randint(100, 665)}-{self._digits(2)}-{token}")
        if kind == "dob":
            return self._keep(f"19{self._digits(2)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}")
        if kind == "address":
            return self._keep(f"{rng.randint(10, 9999)}{token} {rng.choice(STREETS)}")
        if kind == "zip":
            # Sent, but not searched for: five digits occur in any large dump by chance.
            return f"9{token}"
        if kind == "mrn":
            return self._keep(f"MRN{self._digits(9)}")
        if kind == "ip":
            return self._keep(f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}")
        if kind in ("patient", "member", "device", "advertising"):
            return self._keep(f"{kind}-{self._digits(10)}")
        if kind == "url":
            return self._keep(
                f"https://portal.example-clinic.org/results?mrn={self._digits(9)}&dob=19{self._digits(2)}"
            )
        raise ValueError(kind)

    def free_text(self) -> str:
        kind = self.rng.choice(["phone", "email", "name", "ssn"])
        return f"patient called from {self.identifier(kind)} about the results"

    def url(self) -> str:
        return self.identifier("url")

    def identifying_fields(self, count: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(count):
            kind = self.rng.choice(list(SPELLINGS))
            out[self.rng.choice(SPELLINGS[kind])] = self.identifier(kind)
        return out

    # -- messages -------------------------------------------------------------
    def properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {"plan": "gold", "amount": self.rng.randint(1, 500)}
        props.update(self.identifying_fields(self.rng.randint(1, 3)))
        shape = self.rng.random()
        if shape < 0.3:
            props["contact"] = {"details": self.identifying_fields(2), "list": [self.identifying_fields(1)]}
        elif shape < 0.6:
            props["visits"] = [{"note": self.free_text()}, {"with": self.identifier("name")}]
        else:
            props["comment"] = self.free_text()
        return props

    def context(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "library": {"name": "analytics-python", "version": "2.4.0"},
            "locale": "en-US",
            "timezone": "America/Chicago",
            "page": {
                "path": f"/patients/{self.identifier('mrn')}",
                "search": f"?email={self.identifier('email')}",
                "referrer": self.url(),
                "url": self.url(),
                "title": f"Chart of {self.identifier('name')}",
            },
            "device": {
                "id": self.identifier("device"),
                "advertisingId": self.identifier("advertising"),
            },
            "location": {"latitude": rng.uniform(20, 50), "longitude": rng.uniform(-120, -70)},
            "traits": self.identifying_fields(2),
            "ip": self.identifier("ip"),
        }

    def event(self, index: int) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": self.rng.choice(["page_view", "click", "form_submit", "login", "custom"]),
            "userId": self.identifier("patient"),
            "properties": self.properties(),
            "context": self.context(),
            "metadata": {"note": self.free_text(), "tags": [self.identifier("email")]},
        }
        if index % 3 == 0:
            event["messageId"] = f"msg-{self.identifier('email')}-{index}"
        if index % 5 == 0:
            event["traits"] = self.identifying_fields(3)
        return event

    def segment_message(self, index: int) -> dict[str, Any]:
        kind = ["track", "identify", "page", "group", "screen"][index % 5]
        message: dict[str, Any] = {
            "type": kind,
            "userId": self.identifier("member"),
            "context": self.context(),
        }
        if kind == "track":
            # The event name is free text too: a phone number must never become a key name.
            message["event"] = f"Called {self.identifier('phone')}"
            message["properties"] = self.properties()
        elif kind == "identify":
            message["traits"] = self.identifying_fields(4)
        elif kind == "page":
            message["name"] = f"Results of {self.identifier('name')}"
            message["category"] = f"Chart {self.identifier('mrn')}"
            message["properties"] = {"title": f"Lab report for {self.identifier('name')}", "url": self.url()}
        elif kind == "group":
            message["groupId"] = self.identifier("mrn")
            message["traits"] = {"name": self.identifier("name")}
        else:
            message["name"] = f"Profile {self.identifier('email')}"
        if index % 4 == 0:
            message["messageId"] = f"seg-{self.identifier('ssn')}-{index}"
        return message

    def samples(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """A sample with an identifier in a tag value (refused) and a clean one."""
        kind = ["email", "ssn", "phone", "mrn"][index % 4]
        bad = {"name": "visit.duration", "value": index, "tags": {"route": "/visit", "who": self.identifier(kind)}}
        good = {"name": "visit.duration", "value": index, "tags": {"route": "/visit", "clinic": f"c{index % 3}"}}
        return bad, good


def build(events: int = 600, segment: int = 250, sdk: int = 100, samples: int = 150) -> Corpus:
    """At least 1,000 messages: native events, Segment messages (HTTP and the
    real SDK) and metric samples."""
    gen = Generator()
    corpus = gen.corpus
    corpus.events = [gen.event(i) for i in range(events)]
    corpus.segment = [gen.segment_message(i) for i in range(segment)]
    corpus.sdk_calls = [gen.segment_message(i) for i in range(sdk)]
    for i in range(samples):
        bad, good = gen.samples(i)
        corpus.bad_samples.append(bad)
        corpus.good_samples.append(good)
    return corpus
