"""A sweep from config to run directory (docs/architecture.md §3, §9): the typed Sweep, preparation, the
feature store, the units of work, the Ray driver, the ``against=`` reference run and the run directory."""
