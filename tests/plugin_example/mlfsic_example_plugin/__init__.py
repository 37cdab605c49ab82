"""An example third-party mlfsic method package (see README, "Your own method in one file")."""
