//! Nothing but tests: see `tests/browser/`, run by `scripts/e2e.sh`.
