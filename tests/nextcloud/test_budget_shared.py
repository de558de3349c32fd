"""The AppAPI failure budget shared by replicas on one storage: Nextcloud locks out an IP, not a
process, so the refusals of every replica count together; a success clears them for all; one
trial call per minute among all of them; and concurrent merges from several processes lose
nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

from beeflow.errors import NextcloudError
from beeflow.nextcloud.budget import BUDGET_FILE, NC_MAX_ATTEMPTS, AuthBudget
from beeflow.nextcloud.client import NEXTCLOUD, NextcloudClient
from tests.conftest import ConnectorFactory
from tests.fakes.nextcloud import FakeNextcloud
from tests.procs import REPO


async def test_two_replicas_stop_at_one_shared_budget(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    """Per process, two replicas would spend 2 x 8 attempts and lock the IP out (over 10);
    shared, they stop at 8 together."""
    fake_nc.registered = False
    a: NextcloudClient = (await connector_factory()).app[NEXTCLOUD]
    b: NextcloudClient = (await connector_factory()).app[NEXTCLOUD]
    outcomes = []
    for client in (a, b, a, b, a, b, a, b):
        try:
            outcomes.append("refused" if (await client.probe()).auth_refused else "?")
        except NextcloudError as exc:
            outcomes.append(exc.kind)
    assert outcomes == ["refused"] * 4 + ["auth_budget_spent"] * 4
    assert fake_nc.attempts_for() == 8 < NC_MAX_ATTEMPTS
    assert a.budget.attempts == b.budget.attempts == 8
    assert a.budget.spent
    assert b.budget.spent
    saved = json.loads((a.budget_path or Path()).read_text())
    assert len(saved["refusals"]) == 4


async def test_a_success_on_one_replica_clears_the_count_for_all(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    fake_nc.registered = False
    a: NextcloudClient = (await connector_factory()).app[NEXTCLOUD]
    b: NextcloudClient = (await connector_factory()).app[NEXTCLOUD]
    assert (await a.probe()).auth_refused
    assert (await b.probe()).auth_refused
    assert b.budget.attempts == 4
    fake_nc.register()
    assert (await a.probe()).ok
    assert a.budget.attempts == 0
    b.sync_budget()
    assert b.budget.attempts == 0
    assert json.loads((a.budget_path or Path()).read_text())["refusals"] == []


async def test_one_trial_call_among_the_replicas_per_minute(
    connector_factory: ConnectorFactory, fake_nc: FakeNextcloud
) -> None:
    """With the budget spent, AppAPI's secret on an inbound request lets ONE trial call
    through: one for all replicas, not one each (each refusal adds 2 attempts)."""
    fake_nc.registered = False
    a: NextcloudClient = (await connector_factory()).app[NEXTCLOUD]
    b: NextcloudClient = (await connector_factory()).app[NEXTCLOUD]
    for client in (a, b, a):
        assert (await client.probe()).auth_refused
    assert a.budget.attempts == 6
    # Three refusals on record: one more leaves Nextcloud at 8, within its threshold.
    a.budget.limit = b.budget.limit = 3
    b.sync_budget()
    assert a.budget.spent
    assert b.budget.spent
    a.trusted_request_seen()
    b.trusted_request_seen()
    trials = [c for c in (a, b) if not c.budget.spent]
    assert len(trials) == 1
    assert (await trials[0].probe()).auth_refused
    assert fake_nc.attempts_for() == 8


MERGER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from beeflow.lease import update_json
    from beeflow.nextcloud.budget import AuthBudget
    path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    budget = AuthBudget(limit=1000)
    for n in range(count):
        budget.record_failure(f"{name}-{n}", user=name)
        delta = budget.delta()
        data = update_json(path, lambda data: budget.merged(data, delta))
        budget.merged_into(data, delta)
    """
)


async def test_concurrent_merges_from_several_processes_lose_no_refusal(tmp_path: Path) -> None:
    path = tmp_path / BUDGET_FILE
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MERGER,
            str(path),
            f"replica{n}",
            "25",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for n in range(3)
    ]
    assert [await p.wait() for p in procs] == [0, 0, 0]
    budget = AuthBudget(limit=1000)
    assert budget.restore(json.loads(path.read_text())) == 75
    users = sorted({r["user"] for r in json.loads(path.read_text())["refusals"]})
    assert users == ["replica0", "replica1", "replica2"]


def test_a_merge_keeps_what_was_recorded_while_it_ran() -> None:
    budget = AuthBudget(limit=1000)
    budget.record_failure("first")
    delta = budget.delta()
    merged = budget.merged({"version": 1, "refusals": []}, delta)
    budget.record_failure("second")  # while the merge ran in its thread
    budget.merged_into(merged, delta)
    assert budget.used == 2
    assert budget.changed  # the second one is still to merge
    again = budget.delta()
    assert [r.user for r in again[0]] == [""]
    assert len(budget.merged(merged, again)["refusals"]) == 2
