"""The Hydra config tree shipped with mlfsic (data files only; see ``mlfsic.harness.config``)."""
