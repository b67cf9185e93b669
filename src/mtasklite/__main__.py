"""``python -m mtasklite``: a one-minute tour.

Two stateful worker processes, each with its own constructor arguments, tokenise an
unsized stream of sentences through the lazy ``imap``, under a tqdm bar; then each worker
reports what it did.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
from typing import Any, Iterator, Optional

from tqdm import tqdm

import mtasklite as mt


@mt.delayed_init
class Tokenizer:
    """Stands for an expensive per-worker object (a model, a connection, a GPU)."""

    def __init__(self, lang: str):
        self.lang = lang
        self.calls = 0  # state that lives as long as the worker process

    def __call__(self, text: str) -> tuple[Optional[int], str, int, int, int]:
        self.calls += 1
        return mt.worker_index(), self.lang, os.getpid(), self.calls, len(text.split())


def sentences(limit: int) -> Iterator[str]:
    """An unsized generator: imap pulls from it lazily, a bounded window at a time."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
    for i in itertools.islice(itertools.count(), limit):
        yield " ".join(words[: 1 + i % len(words)])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mtasklite", description=__doc__)
    parser.add_argument("-n", "--items", type=int, default=200_000, help="sentences to stream")
    args = parser.parse_args()

    workers = [Tokenizer("en"), Tokenizer("de")]
    words: collections.Counter[tuple[Any, str, int]] = collections.Counter()
    calls: dict[tuple[Any, str, int], int] = {}
    with mt.StatefulProcessPoolExecutor(worker=workers) as ex:
        stream = ex.imap(ex.worker, sentences(args.items))
        for index, lang, pid, count, n_words in tqdm(stream, desc="tokenising", unit=" sent"):
            words[index, lang, pid] += n_words
            calls[index, lang, pid] = max(count, calls.get((index, lang, pid), 0))
    for key in sorted(calls):
        index, lang, pid = key
        print(
            f"worker {index} (lang={lang!r}, pid {pid}): one object served {calls[key]} "
            f"sentences, {words[key]} words"
        )


if __name__ == "__main__":
    main()
