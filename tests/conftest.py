"""Test set-up and shared fixtures.

TRITON_INTERPRET must be set before any Triton kernel is decorated, so before msgc is
imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from msgc.train.corpus import load_corpus  # noqa: E402

TEST_THREADS = 2  # subprocesses that must match in-process results get it too
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 kB of Shakespeare: val and test splits of 2 kB each."""
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(load_corpus("shakespeare")["train"][:40_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add overhead (and spin on a busy machine). A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MSGC_CACHE for the test."""
    monkeypatch.setenv("MSGC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
