"""pqdm-compatible parallel map on worker processes: ``from mtasklite.processes import pqdm``."""

from ._pqdm import Pqdm, make_pqdm

__all__ = ["pqdm"]

#: ``pqdm(input_iterable, worker_or_worker_arr, n_jobs=None, argument_type="single_arg",
#: bounded=False, exception_behaviour="ignore", tqdm_class=tqdm.auto.tqdm, **kwargs)``
pqdm: Pqdm = make_pqdm(use_threads=False)
