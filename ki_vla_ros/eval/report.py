"""Writing an evaluation: report.json (everything), summary.md (for people), PNG plots.

Plots (matplotlib, Agg backend -- no display needed):
    error_vs_horizon.png   normalized MAE per horizon step: the mean over the moving dims, each
                           moving dim, and (grey, dotted) the dims that never moved
    window_worst.png       predicted vs recorded per action dim, the worst window, against time
                           since the bag's start, in the dim's unit (rad, m, m/s)
    window_best.png        the same for the best window
Steps that were not compared (no recorded target, or dropped for latency) are shaded, and the
legend says so. A dim that barely moves is drawn over STILL_AXIS_FRACTION of its joint range,
not zoomed into numerical noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ki_vla_ros.eval.metrics import Window

REPORT_JSON = "report.json"
SUMMARY_MD = "summary.md"
RANKED_WINDOWS = 5  # best and worst windows listed in the report
STILL_AXIS_FRACTION = 0.1  # y range of a subplot whose lines span less: this fraction of the joint range


def write_report(report: dict, windows: Sequence[Window], ranges: np.ndarray, out_dir: Path,
                 plots: bool = True) -> None:
    """Adds best/worst windows and plot paths to `report`, then writes everything."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = sorted((w for w in windows if w.compared.any()), key=lambda w: w.normalized_mae(ranges))
    report["best_windows"] = [_window_brief(w, ranges) for w in scored[:RANKED_WINDOWS]]
    report["worst_windows"] = [_window_brief(w, ranges) for w in scored[::-1][:RANKED_WINDOWS]]
    report["plots"] = {}
    if plots and scored:
        report["plots"] = _plot_all(report, scored[0], scored[-1], ranges, out_dir)
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (out_dir / SUMMARY_MD).write_text(summary_markdown(report))


def _window_brief(window: Window, ranges: np.ndarray) -> dict:
    return {"bag": window.bag, "stamp_s": round(window.stamp_s, 6),
            "since_bag_start_s": round(window.stamp_s - window.bag_start_s, 3),
            "mae_normalized": window.normalized_mae(ranges),
            "latency_ms": round(window.latency_s * 1e3, 3), "first_compared_step": window.first_compared_step}


# ----------------------------------------------------------------------------- plots


def _plot_all(report: dict, best: Window, worst: Window, ranges: np.ndarray, out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["config"]["action_names"]
    units = report["config"]["units"]
    moved = [report["per_dim"][n]["moved"] for n in names]
    files = {"error_vs_horizon": "error_vs_horizon.png", "window_worst": "window_worst.png",
             "window_best": "window_best.png"}
    _plot_horizon(plt, report["by_horizon_step"], names, moved, ranges, out_dir / files["error_vs_horizon"],
                  report["settings"]["latency_aware"])
    _plot_window(plt, worst, names, units, ranges, out_dir / files["window_worst"], "worst")
    _plot_window(plt, best, names, units, ranges, out_dir / files["window_best"], "best")
    return files


def _plot_horizon(plt, by_step: dict, names: Sequence[str], moved: Sequence[bool], ranges: np.ndarray,
                  path: Path, latency_aware: bool) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    times = np.asarray(by_step["time_s"])
    per_dim = np.stack([np.asarray([np.nan if v is None else v for v in by_step["mae_per_dim"][name]]) / ranges[d]
                        for d, name in enumerate(names)], axis=1)  # [H, D]
    few = len(names) <= 10
    for d, name in enumerate(names):
        if moved[d]:
            ax.plot(times, per_dim[:, d], lw=0.8, alpha=0.6, label=name if few else None)
        else:
            ax.plot(times, per_dim[:, d], ":", color="0.6", lw=0.8,
                    label=f"{name} (never moved)" if few else None)
    if any(moved):  # mean over the moving dims, each (step, dim) weighted alike
        moving = per_dim[:, np.asarray(moved)]
        counted = np.isfinite(moving).sum(1)  # steps with nothing compared (latency) stay empty
        mean = np.where(counted > 0, np.nansum(moving, axis=1) / np.maximum(counted, 1), np.nan)
        ax.plot(times, mean, "k-o", lw=2, ms=3, label=f"mean of {sum(moved)} moving dims")
    ax.set_xlabel("time after the observation (s)")
    ax.set_ylabel("MAE / joint range (fraction)")
    title = "Open-loop error vs horizon"
    ax.set_title(title + (" (latency-aware: dropped steps not compared)" if latency_aware else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_window(plt, window: Window, names: Sequence[str], units: Sequence[str], ranges: np.ndarray,
                 path: Path, label: str) -> None:
    from matplotlib.patches import Patch

    dims = len(names)
    cols = min(4, dims)
    rows = math.ceil(dims / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.4 * rows + 0.6), dpi=90, squeeze=False,
                             layout="constrained")  # makes room for the title, legend and x label
    start_s = window.stamp_s - window.bag_start_s  # the observation, in seconds since the bag's start
    dt = window.step_duration_s
    times = start_s + dt * np.arange(window.predicted.shape[0])
    for d, name in enumerate(names):
        ax = axes[d // cols][d % cols]
        ax.plot(times, window.recorded[:, d], "k-o", ms=3, lw=1.5, label="recorded")
        ax.plot(times, window.predicted[:, d], "C3-s", ms=3, lw=1.2, label="predicted")
        for k in np.flatnonzero(~window.compared[:, d]):  # not compared: shaded
            ax.axvspan(times[k] - dt / 2, times[k] + dt / 2, color="0.85", lw=0)
        limits = still_axis_limits(np.concatenate([window.recorded[:, d], window.predicted[:, d]]), ranges[d])
        if limits is not None:
            ax.set_ylim(*limits)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(name, fontsize=8)
        ax.set_ylabel(units[d], fontsize=7)
        if d + cols >= dims:  # the lowest plot of its column
            ax.set_xlabel("time since the bag's start (s)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for d in range(dims, rows * cols):
        axes[d // cols][d % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if not window.compared.all():
        handles.append(Patch(color="0.85"))
        labels.append("not compared (no recorded target, or dropped for latency)")
    fig.suptitle(f"{label} window: {Path(window.bag).name}, observation at {start_s:.2f} s after the bag "
                 f"start; MAE / range {window.normalized_mae(ranges):.4f}", fontsize=10)
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.savefig(path)
    plt.close(fig)


def still_axis_limits(values: np.ndarray, joint_range: float) -> tuple[float, float] | None:
    """y limits for lines that span less than STILL_AXIS_FRACTION of the joint's range: that much of
    the range around their middle (a held joint reads as flat, not as 1e-7 noise); None otherwise."""
    values = values[np.isfinite(values)]
    if not values.size or np.ptp(values) >= STILL_AXIS_FRACTION * joint_range:
        return None
    middle, half = (values.max() + values.min()) / 2, STILL_AXIS_FRACTION * joint_range / 2
    return float(middle - half), float(middle + half)


# ----------------------------------------------------------------------------- summary


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_markdown(report: dict) -> str:
    totals, settings, config = report["totals"], report["settings"], report["config"]
    lines = [
        f"# Open-loop evaluation: {config['robot']}",
        "",
        f"- policy: `{report['policy']}`; config: `{config['source']}`",
        f"- bags: {totals['bags_ok']} evaluated, {totals['bags_failed']} failed; "
        f"{totals['windows']} chunks compared in {totals['wall_s']:.1f} s "
        f"({_fmt(totals['observations_per_s'], 1)} observations/s)",
        f"- horizon {config['horizon_steps']} x {config['step_duration_s']} s; one observation every "
        f"{settings['every_s']} s; targets: {settings['targets']}; "
        + ("latency-aware (steps that pass during the latency are not compared)"
           + (f", assumed inference latency {settings['latency_s']} s" if settings["latency_s"] is not None
              else ", measured inference latency")
           if settings["latency_aware"] else "all steps compared (latency ignored)"),
        "",
        "## Overall",
        "",
    ]
    moving, everything = report["overall_moving"], report["overall"]
    if moving["dims"]:
        lines.append(f"Over the {len(moving['dims'])} dims that moved ({', '.join(moving['dims'])}): MAE / range "
                     f"**{_fmt(moving['mae_normalized'])}**, RMSE / range **{_fmt(moving['rmse_normalized'])}** "
                     f"over {moving['compared']} compared values.")
    else:
        lines.append("No action dim moved in these bags; every error below is of a joint held still.")
    if moving["still_dims"]:
        lines += ["", f"Never moved (recorded targets span < 1 % of the range), left out of that mean: "
                      f"{', '.join(moving['still_dims'])}. Over all {len(report['per_dim'])} dims: MAE / range "
                      f"{_fmt(everything['mae_normalized'])}."]
    units = report["config"]["units"]
    lines += ["", "| action dim | moved | MAE | RMSE | MAE / range | RMSE / range | range | unit |",
              "|---|---|---|---|---|---|---|---|"]
    for (name, s), unit in zip(report["per_dim"].items(), units):
        lines.append(f"| {name} | {'yes' if s['moved'] else 'no'} | {_fmt(s['mae'])} | {_fmt(s['rmse'])} | "
                     f"{_fmt(s['mae_normalized'])} | {_fmt(s['rmse_normalized'])} | {s['range']:.4g} | {unit} |")
    by_step = report["by_horizon_step"]
    lines += ["", "## Error by horizon step (all dims)", "",
              "| step | t (s) | MAE / range | RMSE / range | compared |",
              "|---|---|---|---|---|"]
    for k in by_step["step"]:
        lines.append(f"| {k} | {by_step['time_s'][k]:.3f} | {_fmt(by_step['mae_normalized'][k])} | "
                     f"{_fmt(by_step['rmse_normalized'][k])} | {by_step['compared'][k]} |")
    latency = report["latency"]
    lines += ["", "## Latency (ms)", "", "| | p50 | p90 | p99 | max |", "|---|---|---|---|---|"]
    for key, label in (("inference_ms", "Policy.infer"), ("effective_ms", "observation age + inference")):
        s = latency[key]
        lines.append(f"| {label} | {_fmt(s['p50'], 2)} | {_fmt(s['p90'], 2)} | {_fmt(s['p99'], 2)} | "
                     f"{_fmt(s['max'], 2)} |")
    lines += ["", "## Episodes", "", "| bag | status | chunks | MAE / range | RMSE / range | targets |",
              "|---|---|---|---|---|---|"]
    for b in report["bags"]:
        if b["status"] == "ok":
            sources = "; ".join(f"{g}: {s}" for g, s in b["targets"].items())
            lines.append(f"| `{b['bag']}` | ok | {b['windows']} | {_fmt(b['mae_normalized'])} | "
                         f"{_fmt(b['rmse_normalized'])} | {sources} |")
        else:
            lines.append(f"| `{b['bag']}` | **failed** | - | - | - | {b['error_type']} |")
    if report["best_episode"]:
        lines += ["", f"Best episode: `{report['best_episode']['bag']}` "
                      f"({_fmt(report['best_episode']['mae_normalized'])}); worst: "
                      f"`{report['worst_episode']['bag']}` ({_fmt(report['worst_episode']['mae_normalized'])})."]
    warnings = [b for b in report["bags"] if b.get("warning")]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- `{b['bag']}`: {b['warning']}" for b in warnings]
    if report["failed_bags"]:
        lines += ["", "## Failed bags", ""]
        lines += [f"- `{f['bag']}`: {f['error']}" for f in report["failed_bags"]]
    if report["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in report["plots"].items()]
    return "\n".join(lines) + "\n"
