"""A run's processes: the launcher that checks and starts them, and what each rank does before training.

launcher (checks, spawns one rank per device, watches them) <- launchwatch (its own watchdog),
runlock (one run per output_dir), devices (`auto` resolved); a rank: startup (its log from its first
second), procgroup (the process group on this attempt's store), orphans (a rank whose launcher died
goes too). The files a run writes are rundir.py's, how a process ends exitcodes.py's: login-node tools
(diagnose, collect) use those two without this package.
"""
