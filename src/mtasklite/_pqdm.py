"""The engine behind :func:`mtasklite.processes.pqdm` and :func:`mtasklite.threads.pqdm`."""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Optional, Sequence, Union

from .constants import ArgumentPassing, ExceptionBehaviour
from .pool import Pool, PoolResults, SizedPoolResults
from .stateful import WorkerLike

__all__ = ["run_pqdm"]

#: parameters pqdm names explicitly: passing them again through ``**kwargs`` is an error
_EXPLICIT = frozenset(
    {
        "input_iterable",
        "worker_or_worker_arr",
        "n_jobs",
        "argument_type",
        "bounded",
        "exception_behaviour",
        "exception_behavior",
        "tqdm_class",
        "use_threads",
    }
)
#: the remaining keyword arguments that go to the pool; everything else goes to tqdm
_POOL_OPTIONS = frozenset(inspect.signature(Pool).parameters) - _EXPLICIT


def run_pqdm(
    input_iterable: Iterable[Any],
    worker_or_worker_arr: Union[WorkerLike, Sequence[WorkerLike]],
    n_jobs: Optional[int],
    argument_type: Union[ArgumentPassing, str],
    bounded: bool,
    exception_behaviour: Union[ExceptionBehaviour, str],
    tqdm_class: Any,
    use_threads: bool,
    kwargs: dict[str, Any],
) -> PoolResults:
    """Split ``kwargs`` between the pool and tqdm, start the pool, wrap its results in a bar."""
    repeated = sorted(_EXPLICIT.intersection(kwargs))
    if repeated:
        raise TypeError(f"pqdm() got {', '.join(map(repr, repeated))} twice (as a named argument)")
    pool_kwargs = {name: kwargs[name] for name in _POOL_OPTIONS.intersection(kwargs)}
    tqdm_kwargs = {name: value for name, value in kwargs.items() if name not in pool_kwargs}
    pool = Pool(
        worker_or_worker_arr,
        n_jobs,
        argument_type,
        exception_behaviour,
        bounded,
        use_threads=use_threads,
        **pool_kwargs,
    )
    try:
        results = pool._run(input_iterable, close_pool=True)
        length = len(results) if isinstance(results, SizedPoolResults) else None
        tqdm_kwargs.setdefault("total", length)
        bar = tqdm_class(results, **tqdm_kwargs)
    except BaseException:
        pool.terminate()
        raise

    def close() -> None:
        results.close()
        bar.close()

    source = iter(bar)
    if length is None:
        return PoolResults(source, close, pool.terminate)
    return SizedPoolResults(source, close, length, pool.terminate)
