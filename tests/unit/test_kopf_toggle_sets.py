"""mljob.operator.quiet_toggle_sets: kopf's index readiness wakes its waiters when the answer flips, and only then."""

from __future__ import annotations

import asyncio

import pytest
from kopf._cogs.aiokits import aiotoggles

from mljob.operator import quiet_toggle_sets


@pytest.mark.asyncio
async def test_waiters_wake_once_the_set_empties_and_not_on_every_drop():
    assert quiet_toggle_sets()
    indexed = aiotoggles.ToggleSet(all)
    toggles = [await indexed.make_toggle(name=f"object-{i}") for i in range(200)]
    checks = 0
    real_is_on = indexed.is_on

    def counting() -> bool:
        nonlocal checks
        checks += 1
        return real_is_on()

    indexed.is_on = counting  # type: ignore[method-assign]
    waiters = [asyncio.create_task(indexed.wait_for(True)) for _ in range(50)]
    await asyncio.sleep(0)
    for toggle in toggles[:-1]:
        await indexed.drop_toggle(toggle)
        await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    woken = checks
    await indexed.drop_toggle(toggles[-1])
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    # Each drop asked the set twice; the waiters asked once each when they started and once when it emptied.
    assert woken <= 2 * 199 + 50
    assert indexed.is_on()


@pytest.mark.asyncio
async def test_a_toggle_added_or_flipped_still_wakes_who_waits_for_that():
    assert quiet_toggle_sets()
    paused = aiotoggles.ToggleSet(any)
    resumed = asyncio.create_task(paused.wait_for(True))
    toggle = await paused.make_toggle(False, name="peer")
    await asyncio.sleep(0)
    assert not resumed.done()
    await toggle.turn_to(True)  # a toggle's own flip wakes as kopf always did
    await asyncio.wait_for(resumed, 5)
    off = asyncio.create_task(paused.wait_for(False))
    await paused.drop_toggle(toggle)  # the set's answer flips: the waiter wakes
    await asyncio.wait_for(off, 5)
    assert paused.is_off()
