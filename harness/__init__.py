"""mlfsic.harness: episodes, metrics, features, runner (Ray), store, leaderboard and the CLI."""
