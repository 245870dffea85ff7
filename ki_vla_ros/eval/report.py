"""Writing an evaluation: report.json (everything), summary.md (for people), PNG plots.

Plots (matplotlib, Agg backend -- no display needed):
    error_vs_horizon.png   normalized MAE per horizon step, overall and per action dim
    window_worst.png       predicted vs recorded per action dim, the worst window
    window_best.png        the same for the best window
Dropped steps (latency-aware mode) and steps without a recorded target are shaded.
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
            "mae_normalized": window.normalized_mae(ranges),
            "latency_ms": round(window.latency_s * 1e3, 3), "first_compared_step": window.first_compared_step}


# ----------------------------------------------------------------------------- plots


def _plot_all(report: dict, best: Window, worst: Window, ranges: np.ndarray, out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["config"]["action_names"]
    files = {"error_vs_horizon": "error_vs_horizon.png", "window_worst": "window_worst.png",
             "window_best": "window_best.png"}
    _plot_horizon(plt, report["by_horizon_step"], names, ranges, out_dir / files["error_vs_horizon"],
                  report["settings"]["latency_aware"])
    _plot_window(plt, worst, names, ranges, out_dir / files["window_worst"], "worst")
    _plot_window(plt, best, names, ranges, out_dir / files["window_best"], "best")
    return files


def _plot_horizon(plt, by_step: dict, names: Sequence[str], ranges: np.ndarray, path: Path,
                  latency_aware: bool) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    times = np.asarray(by_step["time_s"])
    for d, name in enumerate(names):
        mae = np.asarray([np.nan if v is None else v for v in by_step["mae_per_dim"][name]]) / ranges[d]
        ax.plot(times, mae, lw=0.8, alpha=0.5, label=name if len(names) <= 10 else None)
    overall = np.asarray([np.nan if v is None else v for v in by_step["mae_normalized"]])
    ax.plot(times, overall, "k-o", lw=2, ms=3, label="all dims")
    ax.set_xlabel("time after observation (s)")
    ax.set_ylabel("MAE / joint range")
    title = "Open-loop error vs horizon"
    ax.set_title(title + (" (latency-aware: dropped steps not compared)" if latency_aware else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_window(plt, window: Window, names: Sequence[str], ranges: np.ndarray, path: Path,
                 label: str) -> None:
    dims = len(names)
    cols = min(4, dims)
    rows = math.ceil(dims / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows), dpi=90, squeeze=False)
    times = window.step_duration_s * np.arange(window.predicted.shape[0])
    for d, name in enumerate(names):
        ax = axes[d // cols][d % cols]
        ax.plot(times, window.recorded[:, d], "k-o", ms=3, lw=1.5, label="recorded")
        ax.plot(times, window.predicted[:, d], "C3-s", ms=3, lw=1.2, label="predicted")
        for k in np.flatnonzero(~window.compared[:, d]):  # not compared: shaded
            ax.axvspan(times[k] - window.step_duration_s / 2, times[k] + window.step_duration_s / 2,
                       color="0.85", lw=0)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for d in range(dims, rows * cols):
        axes[d // cols][d % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{label} window: {Path(window.bag).name} at {window.stamp_s:.3f} s, "
                 f"MAE/range {window.normalized_mae(ranges):.4f}", fontsize=10)
    fig.supxlabel("time after observation (s)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
        f"MAE / range **{_fmt(report['overall']['mae_normalized'])}**, RMSE / range "
        f"**{_fmt(report['overall']['rmse_normalized'])}** over {report['overall']['compared']} "
        "compared values.",
        "",
        "| action dim | MAE | RMSE | MAE / range | RMSE / range | range |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["per_dim"].items():
        lines.append(f"| {name} | {_fmt(s['mae'])} | {_fmt(s['rmse'])} | {_fmt(s['mae_normalized'])} | "
                     f"{_fmt(s['rmse_normalized'])} | {s['range']:.4g} |")
    by_step = report["by_horizon_step"]
    lines += ["", "## Error by horizon step", "", "| step | t (s) | MAE / range | RMSE / range | compared |",
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
