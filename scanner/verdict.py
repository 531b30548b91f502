"""Verdicts: what an appliance said about one file.

Invariants: an `ERROR` verdict is never a statement about the file — it only
says no verdict could be had. Nothing in `scanner` turns a reply it does not
understand into `CLEAN`; the constructors below are the only way verdicts are
made, so the appliance URL and signature version always travel with them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    CLEAN = "clean"
    INFECTED = "infected"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    #: signature name when infected, reason when error, "" when clean
    detail: str = ""
    #: URL of the appliance that answered (or was last tried)
    appliance: str = ""
    #: the appliance's signature version (clamd database version, ICAP ISTag)
    sig_version: str = ""

    @classmethod
    def clean(cls, appliance: str = "", sig_version: str = "") -> Verdict:
        return cls(Outcome.CLEAN, "", appliance, sig_version)

    @classmethod
    def infected(cls, signature: str, appliance: str = "", sig_version: str = "") -> Verdict:
        return cls(Outcome.INFECTED, signature, appliance, sig_version)

    @classmethod
    def error(cls, reason: str, appliance: str = "") -> Verdict:
        return cls(Outcome.ERROR, reason, appliance, "")

    @property
    def is_clean(self) -> bool:
        return self.outcome is Outcome.CLEAN

    @property
    def is_infected(self) -> bool:
        return self.outcome is Outcome.INFECTED

    @property
    def is_error(self) -> bool:
        return self.outcome is Outcome.ERROR

    def line(self) -> str:
        """The clamdscan-style tail of a report line: `OK`, `SIG FOUND`, `reason ERROR`."""
        if self.outcome is Outcome.CLEAN:
            return "OK"
        if self.outcome is Outcome.INFECTED:
            return f"{self.detail} FOUND"
        return f"ERROR {self.detail}"


class ApplianceError(Exception):
    """Transport or protocol trouble with one appliance (counts against its breaker).

    Distinct from an appliance that answered with a well-formed error (for
    example a size limit): that is returned as `Verdict.error` and the
    appliance is still healthy.
    """
