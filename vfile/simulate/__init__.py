"""`vfile simulate`: a migration with an appliance outage, under every fail mode.

    scenario  parameters, the timeline, each mode's configuration (pure)
    guest     the generated guest data (clean, infected, planted files)
    workload  readers, writers, an indexer: real syscalls through the mount, timed
    harness   the appliance / fault proxy and the per-mode `vfile mount` processes
    run       one mode's timeline, sampling, drain wait and audit; all modes in turn
    report    numbers, report.json, report.md, the summary table
    plot      the PNG timelines (matplotlib, optional extra `simulate`)

`main.simulate(params, report_dir)` is the whole thing; the CLI, bench/failmodes.py
and examples/demo.py call it. This package face imports nothing, so the
command line can read the scenario's defaults without loading the runner.
"""
