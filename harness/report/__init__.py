"""The reporting wing (docs/architecture.md §10): reads run directories, writes leaderboards, claims and figures."""
