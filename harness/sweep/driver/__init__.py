"""The Ray driver behind ``harness.sweep.runner`` (docs/architecture.md §9), one module per job:

    ray_setup.py    starting or joining Ray, checking requests against the cluster, task options, the task's device
    tasks.py        the remote task bodies (backbone, features, fit, evaluate) and their time limit
    preparation.py  everything before the method tasks: dataset, episode sets, backbone, features
    planning.py     the plan: which fits and chunks to submit, in what order (``TaskCosts``)
    collect.py      the ``ray.wait`` loop that files each finished task into its plan
    progress.py     the progress display (a bar on a terminal, plain lines in a log)
    run_record.py   run.json: its first write, the submission counts, the final and the interrupted record
"""
