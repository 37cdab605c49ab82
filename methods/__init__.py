"""mlfsic.methods: the Method API, the registry and one module per method (docs/architecture.md §4.3, 8)."""
