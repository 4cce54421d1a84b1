"""The scale benchmark's stall meter (benchmarks/hub_probe.py): a stall at the very end of a
phase, before the ticking task wakes, still counts, and for that phase only."""

import asyncio
import time

from benchmarks.hub_probe import LoopLag


def hold_loop(seconds: float) -> tuple[float, float]:
    """Run (not sleep) for ``seconds``; the wall and thread CPU milliseconds it took."""
    wall, cpu = time.perf_counter(), time.thread_time()
    while time.perf_counter() < wall + seconds:
        pass
    return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


def test_a_stall_just_before_a_phase_ends_is_counted_in_that_phase():
    async def run() -> tuple:
        lag = LoopLag()
        lag.start()
        await asyncio.sleep(0.01)
        lag.begin()
        await asyncio.sleep(0.02)
        held = hold_loop(0.15)  # and the phase ends at once, the ticking task still asleep
        first = lag.end("held at the end")
        lag.begin()
        await asyncio.sleep(0.05)
        second = lag.end("quiet")
        lag.stop()
        return first, second, held

    first, second, (held_ms, held_cpu_ms) = asyncio.run(run())
    assert first.max_stall_ms >= held_ms - 1
    assert first.max_cpu_stall_ms >= held_cpu_ms - 1  # on a busy machine CPU time is less than wall
    assert second.max_stall_ms < 100  # the held stretch belongs to the phase before
    assert second.ticks > 0
