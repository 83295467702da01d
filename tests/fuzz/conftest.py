"""The fuzz suite's two sizes: a few hundred seeded cases in every test run, and
``pytest tests/fuzz --fuzz-long`` for the tens of thousands docs/reliability.md reports.
The option is known only where tests/fuzz is named on the command line, as pytest reads a
folder's conftest options only then."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="run each fuzz test with its long-mode number of cases (10,000 for most)",
    )


@pytest.fixture
def fuzz(request: pytest.FixtureRequest) -> Callable[[int, int], settings]:
    """``fuzz(ci, long)``: seeded hypothesis settings for ``ci`` cases, or ``long`` of them
    with ``--fuzz-long``. Same cases on every run (derandomized, no example database)."""
    long_mode = request.config.getoption("--fuzz-long", default=False)

    def make(ci: int, long: int = 10_000) -> settings:
        return settings(
            max_examples=long if long_mode else ci, derandomize=True, database=None,
            deadline=None, print_blob=False,
        )  # fmt: skip

    return make
