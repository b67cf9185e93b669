"""The process pool's shared-memory path (``shm_threshold``): big arguments and results make
the round trip through ``submit``/``map``/``imap``, and no segment outlives a shutdown, a
``terminate()``, a crash, a timeout kill, an abandoned ``imap`` or a SIGKILLed parent.

"Outlives" is checked two ways: no ``/dev/shm`` entry of ours (every test also runs with
segments created as ``/dev/shm`` files, where a leak would show), and no descriptor of this
process still pointing at a segment once the pool is shut down.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest

import mtasklite as mt
import support
from support import files, processes, shm

MIB = 1 << 20
PPE = mt.StatefulProcessPoolExecutor


@pytest.fixture(autouse=True, params=["memfd", "dev-shm"])
def nothing_left_behind(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Each test with both kinds of segment (forked workers inherit the choice; spawned ones
    use memfd), then a check for leftovers."""
    if request.param == "dev-shm":
        monkeypatch.delattr(os, "memfd_create", raising=False)
    entries, fds = shm.shm_entries(), shm.own_segment_fds()
    yield
    assert shm.shm_entries() - entries == set()
    assert shm.own_segment_fds() == fds


@pytest.mark.timeout(120)
def test_big_blobs_round_trip_through_submit_map_and_imap(ctx: Any) -> None:
    blobs = [shm.Blob(shm.pattern(3 * MIB, seed)) for seed in range(4)]
    expected = [shm.Blob(blob.data[::-1]) for blob in blobs]
    with PPE(2, ctx) as ex:
        assert ex.submit(shm.reverse, blobs[0]).result(60) == expected[0]
        assert shm.own_segment_fds() > 0  # the arguments went through shared memory
        assert list(ex.map(shm.reverse, blobs)) == expected
        assert list(ex.imap(shm.reverse, blobs)) == expected
        assert ex.submit(shm.reverse, shm.Blob(b"small")).result(60) == shm.Blob(b"llams")


@pytest.mark.timeout(120)
def test_a_64_mib_numpy_array_round_trips_through_submit(ctx: Any) -> None:
    np = pytest.importorskip("numpy")
    array = np.arange(64 * MIB // 8, dtype=np.float64)
    with PPE(1, ctx) as ex:
        for _ in range(3):  # the arenas are reused from the second call on
            result = ex.submit(shm.numpy_plus_one, array).result(60)
            assert result.dtype == array.dtype and result.shape == array.shape
            assert result[0] == 1.0 and result[-1] == array[-1] + 1
            result[0] = -1.0  # the caller's own, writable array
    assert array[0] == 0.0


@pytest.mark.timeout(120)
def test_chunks_too_big_to_send_ahead_wait_for_an_idle_worker() -> None:
    """A chunk whose pickle (beside its shared-memory part) exceeds what may be sent ahead is
    taken back from the busy slot's arena and sent to the next idle one instead."""
    items = [
        (shm.Blob(shm.pattern(2 * MIB, seed)), bytes([seed]) * (300 << 10)) for seed in range(12)
    ]
    expected = [(shm.Blob(blob.data[::-1]), data[::-1]) for blob, data in items]
    with PPE(2, multiprocessing.get_context("fork")) as ex:
        assert list(ex.imap(shm.reverse_pair, items, chunksize=3)) == expected


@pytest.mark.parametrize("threshold", [None, 0])
def test_shm_threshold_none_or_zero_keeps_everything_in_the_pipe(threshold: Any) -> None:
    blob = shm.Blob(shm.pattern(3 * MIB, 1))
    before = shm.own_segment_fds()
    with PPE(1, multiprocessing.get_context("fork"), shm_threshold=threshold) as ex:
        assert ex.submit(shm.reverse, blob).result(60) == shm.Blob(blob.data[::-1])
        assert shm.own_segment_fds() == before


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), ("1mb", TypeError), (1.5, TypeError)]
)
def test_a_bad_shm_threshold_is_refused_by_name(value: Any, error: Any) -> None:
    with pytest.raises(error, match="shm_threshold"):
        PPE(1, shm_threshold=value)


@pytest.mark.timeout(120)
def test_terminate_with_big_arguments_in_flight_leaves_nothing(ctx: Any, tmp_path: Path) -> None:
    blob = shm.Blob(shm.pattern(3 * MIB, 2))
    ex = PPE(2, ctx)
    futures = [ex.submit(shm.report_then_hang, blob, str(tmp_path / f"w{i}")) for i in range(2)]
    for i in range(2):
        assert files.wait_for_file(tmp_path / f"w{i}", 30), f"w{i} never appeared"
        assert (tmp_path / f"w{i}").read_text() == str(zlib.crc32(blob.data))
    queued = ex.submit(shm.reverse, blob)  # encoded later, or never: it must not leak either
    ex.terminate()
    for future in [*futures, queued]:
        assert future.done()


@pytest.mark.timeout(120)
def test_a_worker_crash_holding_big_arguments_leaves_nothing(ctx: Any) -> None:
    blob = shm.Blob(shm.pattern(3 * MIB, 3))
    with PPE(1, ctx) as ex:
        crashed = ex.submit(shm.die_holding, blob)
        assert isinstance(crashed.exception(60), mt.WorkerCrashedError)
        # The respawned worker gets a new pair of arenas and the pool carries on.
        assert ex.submit(shm.reverse, blob).result(60) == shm.Blob(blob.data[::-1])


@pytest.mark.timeout(120)
def test_a_timeout_kill_holding_big_arguments_leaves_nothing(tmp_path: Path) -> None:
    blob = shm.Blob(shm.pattern(3 * MIB, 4))
    with PPE(1, multiprocessing.get_context("fork")) as ex:
        hung = ex.submit_with_timeout(0.5, shm.report_then_hang, blob, str(tmp_path / "w"))
        with pytest.raises(mt.TaskTimeoutError):
            hung.result(60)
        assert ex.submit(shm.reverse, blob).result(60) == shm.Blob(blob.data[::-1])


@pytest.mark.timeout(120)
def test_an_abandoned_imap_of_big_blobs_leaves_nothing() -> None:
    blobs = (shm.Blob(shm.pattern(2 * MIB, seed)) for seed in range(50))
    with PPE(2, multiprocessing.get_context("fork")) as ex:
        results = ex.imap(shm.reverse, blobs)
        first = next(results)
        assert first == shm.Blob(shm.pattern(2 * MIB, 0)[::-1])
        results.close()  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_sigkilled_pool_parent_leaves_nothing(method: str, tmp_path: Path) -> None:
    env = support.child_env()
    code = f"from support import shm; shm.pool_parent({method!r}, {str(tmp_path / 'w')!r})"
    parent = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert parent.stdout.readline().strip() == "ready"
        assert len(workers) == 2
        parent.kill()
        parent.wait(20)
        # they die with their parent (its watcher thread: sentinel and pidfd)
        survivors = processes.wait_gone(workers, 20)
        assert not survivors, f"workers {survivors} outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(20)
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()
