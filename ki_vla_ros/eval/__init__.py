"""Offline evaluation on rosbags, through the same runtime code the live node runs.

    bag_io    read/write rosbag2 MCAP and sqlite3 with rosbags; BagError
    episodes  bag -> observations (runtime.PolicyLoop) and recorded targets
    metrics   per-joint and per-horizon-step errors, latency percentiles
    report    report.json, summary.md, plots
    run       evaluate_bags and the ki-vla eval-bag command's policy loading
    commands  the eval-bag, record and play subcommands
"""
