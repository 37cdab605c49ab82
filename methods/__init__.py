"""mlfsic.methods: the Method API, the registry and one module per method (DESIGN 4.3, 8)."""
