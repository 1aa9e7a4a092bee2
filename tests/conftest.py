"""Shared test wiring. Each fixture family lives in its own module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.ports",
    "tests.fixtures.paper",
    "tests.fixtures.paper_process",
    "tests.fixtures.db",
    "tests.fixtures.temporal",
]
