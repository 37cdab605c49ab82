"""The evaluation protocol (docs/architecture.md §5): data types, label splits, episodes, leakage check, metrics."""
