"""pqdm-compatible parallel map on worker threads: ``from mtasklite.threads import pqdm``."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

from tqdm.auto import tqdm as tqdm_auto

from ._pqdm import run_pqdm
from .constants import ArgumentPassing, ExceptionBehaviour
from .pool import PoolResults
from .stateful import WorkerLike

__all__ = ["pqdm"]


def pqdm(
    input_iterable: Iterable[Any],
    worker_or_worker_arr: Union[WorkerLike, Sequence[WorkerLike]],
    n_jobs: Optional[int] = None,
    argument_type: Union[ArgumentPassing, str] = ArgumentPassing.AS_SINGLE_ARG,
    bounded: bool = False,
    exception_behaviour: Union[ExceptionBehaviour, str] = ExceptionBehaviour.IGNORE,
    tqdm_class: Any = tqdm_auto,
    **kwargs: Any,
) -> PoolResults:
    """Map a worker over ``input_iterable`` on worker threads, with a tqdm progress bar.

    Same argument order as pqdm's ``pqdm``; differences: the result is a lazy iterable
    (and a context manager that shuts the pool down), the worker may be a ``@delayed_init``
    spec or a list of workers (one per worker; ``n_jobs`` then optional), any iterable
    works, ``bounded=False`` submits a sized input up front (unsized inputs always run
    bounded), and failed items yield their exception by default (``exception_behaviour``:
    ``"ignore"``, ``"immediate"`` or ``"deferred"``).  Keyword arguments the pool accepts
    (``chunk_size``, ``chunk_prefill_ratio``, ``is_unordered``, ``task_timeout``,
    ``join_timeout``, ``mp_context``, ...) go to :class:`~mtasklite.Pool`; the rest to tqdm.
    """
    return run_pqdm(
        input_iterable,
        worker_or_worker_arr,
        n_jobs,
        argument_type,
        bounded,
        exception_behaviour,
        tqdm_class,
        True,
        kwargs,
    )
