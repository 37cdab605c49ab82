"""The reporting wing (docs/architecture.md §10): reads run directories, writes leaderboards and their figures.

The LCM study's claims table and explain figure: ``mlfsic.studies.lcm_tomm2024`` (``studies/lcm_tomm2024/``)."""
