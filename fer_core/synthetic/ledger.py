"""A credit ledger for generated grids: a JSON file in the project, written atomically.

A credit is reserved before a generator is called and then committed (with the image file and
its sha256) or released. An interrupted call leaves its entry ``reserved``: it still counts
against the budget, is listed by :meth:`CreditLedger.pending`, and is settled with
:meth:`CreditLedger.resolve`. No secret is ever stored: entries hold only the fields below.
"""

from __future__ import annotations

import fcntl
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from fer_core.errors import DataError, FerCoreError
from fer_core.runs import utc_now, write_json_atomic
from fer_core.validation import Interval, validate_params

#: A number of credits: an integer >= 0.
CREDITS = Interval(Integral, 0, None)

LEDGER_VERSION = 1
#: The backend name of imported grids (the only entries a revert removes).
IMPORTED = "import"
RESERVED, COMMITTED, RELEASED, LOST = "reserved", "committed", "released", "lost"
#: Statuses whose credits count as spent (a reservation counts until it is settled).
CHARGED = (RESERVED, COMMITTED, LOST)


def revertible(entry: Mapping[str, Any]) -> bool:
    """Whether an entry may be removed by a revert: a settled import (a generated grid's credit
    was spent with the provider; a reservation is still in flight)."""
    return entry.get("backend") == IMPORTED and entry.get("status") in (COMMITTED, RELEASED)


class CreditBudgetError(FerCoreError):
    """A reservation would spend more credits than the ledger's budget allows."""


class CreditLedger:
    """The grids made or imported, and the credits they cost, in ``path`` (JSON).

    Args:
        path: the ledger file (conventionally ``data/synthetic/ledger.json``); created on first write.
        budget: set or change the budget (credits); None keeps the stored one (0 for a new ledger).
    """

    @validate_params({"budget": [CREDITS, None]})
    def __init__(self, path: str | Path, budget: int | None = None) -> None:
        self.path = Path(path)
        if budget is not None:
            with self._locked() as state:
                state["budget"] = int(budget)

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"version": LEDGER_VERSION, "budget": 0, "entries": []}
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"corrupt credit ledger {self.path}: {exc}") from None
        if not isinstance(state, dict) or state.get("version") != LEDGER_VERSION or "entries" not in state:
            raise DataError(f"{self.path} is not a version-{LEDGER_VERSION} credit ledger")
        return state

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The state, under an exclusive lock (safe across processes); written back on success."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            yield state
            write_json_atomic(self.path, state)

    @property
    def budget(self) -> int:
        return int(self._read()["budget"])

    def entries(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every entry (oldest first), or those with ``status``."""
        return [e for e in self._read()["entries"] if status is None or e["status"] == status]

    @property
    def spent(self) -> int:
        """Credits committed, lost, or held by unsettled reservations."""
        return sum(e["credits"] for e in self.entries() if e["status"] in CHARGED)

    @property
    def remaining(self) -> int:
        return self.budget - self.spent

    def pending(self) -> list[dict[str, Any]]:
        """Reservations never committed or released (an interrupted generation)."""
        return self.entries(RESERVED)

    @validate_params({"credits": [CREDITS]})
    def reserve(self, credits: int, **record: Any) -> str:
        """Hold ``credits`` for one grid and return the entry id; :class:`CreditBudgetError`
        when the budget cannot cover it. ``record``: prompt, prompt_id, seed, backend, model, ..."""
        credits = int(credits)
        with self._locked() as state:
            spent = sum(e["credits"] for e in state["entries"] if e["status"] in CHARGED)
            if spent + credits > state["budget"]:
                raise CreditBudgetError(
                    f"credit budget exhausted: {spent} of {state['budget']} credits spent or reserved, this grid "
                    f"needs {credits}; raise the budget (fer-core synth generate --budget N) or settle pending "
                    f"reservations (fer-core synth ledger)")
            entry_id = uuid.uuid4().hex[:12]
            state["entries"].append({"id": entry_id, "status": RESERVED, "credits": credits, **record,
                                     "reserved_at": utc_now(), "finished_at": None, "file": None,
                                     "sha256": None, "note": None})
        return entry_id

    def _settle(self, entry_id: str, status: str, **fields: Any) -> dict[str, Any]:
        with self._locked() as state:
            matches = [e for e in state["entries"] if e["id"] == entry_id]
            if not matches:
                raise DataError(f"no ledger entry {entry_id!r} in {self.path}")
            entry = matches[0]
            if entry["status"] != RESERVED:
                raise DataError(f"ledger entry {entry_id} is already {entry['status']}")
            entry.update(status=status, finished_at=utc_now(), **fields)
        return dict(entry)

    def commit(self, entry_id: str, file: str, sha256: str, source: str | None = None) -> dict[str, Any]:
        """The grid was made: record its file (relative to the ledger's folder), hash and, for an
        import, the file it was copied from."""
        return self._settle(entry_id, COMMITTED, file=file, sha256=sha256, source=source)

    def release(self, entry_id: str, note: str) -> dict[str, Any]:
        """The call failed without spending the credit: give it back, saying why."""
        return self._settle(entry_id, RELEASED, credits=0, note=note)

    def resolve(self, entry_id: str, spent: bool, note: str = "resolved by hand") -> dict[str, Any]:
        """Settle an interrupted reservation: ``spent`` keeps the credit as lost (no image), else release it."""
        return self._settle(entry_id, LOST, note=note) if spent else self.release(entry_id, note)

    def remove(self, entry_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Delete imported entries (reverting an import: their credits come back); returns them.
        Generated grids stay: their credits were spent with the provider."""
        wanted = set(entry_ids)
        with self._locked() as state:
            removed = [e for e in state["entries"] if e["id"] in wanted]
            missing = sorted(wanted - {e["id"] for e in removed})
            if missing:
                raise DataError(f"no ledger entries {missing} in {self.path}")
            refused = [e["id"] for e in removed if not revertible(e)]
            if refused:
                raise DataError(f"ledger entries {refused} are not settled imports: only imported grids can be "
                                f"reverted (a generated grid's credit was spent with the provider)")
            state["entries"] = [e for e in state["entries"] if e["id"] not in wanted]
        return removed

    def plan_arithmetic(self, accepted_by_grid: Mapping[str, int] | None = None, layout: int = 6,
                        resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
        """The plan's arithmetic on this ledger: faces asked per credit (a ``layout`` x ``layout``
        grid per credit until grids are committed: 36), faces accepted per credit measured on the
        extracted grids (``accepted_by_grid``: ledger entry id -> accepted faces) with a 95%
        percentile-bootstrap interval over grids, and what the budget and the remaining credits
        should yield (faces asked, faces accepted)."""
        paid = [e for e in self.entries(COMMITTED) if e["credits"] > 0]
        credits = sum(e["credits"] for e in paid)
        asked = sum(int(e.get("layout") or layout) ** 2 for e in paid)
        asked_per_credit = asked / credits if credits else float(layout ** 2)
        extracted = [e for e in paid if accepted_by_grid is not None and e["id"] in accepted_by_grid]
        accepted = np.array([accepted_by_grid[e["id"]] for e in extracted], float) if extracted else np.zeros(0)
        paid_credits = np.array([e["credits"] for e in extracted], float)
        rate = float(accepted.sum() / paid_credits.sum()) if extracted else None
        interval = None
        if len(extracted) >= 2:
            picks = np.random.default_rng(seed).integers(0, len(extracted), (resamples, len(extracted)))
            rates = accepted[picks].sum(axis=1) / paid_credits[picks].sum(axis=1)
            interval = [float(v) for v in np.percentile(rates, [2.5, 97.5])]

        def yield_of(n_credits: int) -> dict[str, Any]:
            return {"credits": n_credits, "faces_asked": round(n_credits * asked_per_credit),
                    "faces_accepted_expected": None if rate is None else round(n_credits * rate, 1),
                    "faces_accepted_95ci": None if interval is None else [round(n_credits * v, 1) for v in interval]}

        return {
            "faces_asked_per_credit": round(asked_per_credit, 3),
            "asked_from": (f"{len(paid)} committed paid grids" if credits
                           else f"the plan ({layout}x{layout} faces per credit)"),
            "faces_accepted_per_credit": None if rate is None else round(rate, 3),
            "faces_accepted_per_credit_95ci": None if interval is None else [round(v, 3) for v in interval],
            "accepted_from": (f"{len(extracted)} extracted paid grids: accepted faces / credits; 95% CI: percentile "
                              f"bootstrap over grids ({resamples} resamples, seed {seed})" if extracted else
                              "no extracted paid grid yet (run 'fer-core synth extract')"),
            "spent": {"credits": credits, "grids": len(paid), "faces_asked": asked, "grids_extracted": len(extracted),
                      "faces_accepted": int(accepted.sum()) if extracted else None},
            "budget": yield_of(self.budget),
            "remaining": yield_of(max(self.remaining, 0)),
        }

    def summary(self) -> dict[str, Any]:
        entries = self.entries()
        counts = {s: sum(e["status"] == s for e in entries) for s in (RESERVED, COMMITTED, RELEASED, LOST)}
        return {"path": str(self.path), "budget": self.budget, "spent": self.spent, "remaining": self.remaining,
                "grids": counts}
