"""A chart of what a search measured: weight bytes against quality (optional extra: matplotlib)."""

from __future__ import annotations

from typing import Any

from prunequant_cli.errors import UsageError


def require_matplotlib() -> Any:
    """pyplot, drawing to files only; a usage error when the 'plot' extra is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'prunequant[plot]'") from None
    return plt


def plot_search(search: dict[str, Any]) -> bytes:
    """A PNG: every configuration measured, the Pareto points joined, the choice marked."""
    plt = require_matplotlib()
    tried = search["tried"]
    use_accuracy = any(t["quality"]["accuracy_drop_points"] is not None for t in tried)
    key = "accuracy_drop_points" if use_accuracy else "max_relative_error"
    ylabel = "accuracy drop (points)" if use_accuracy else "largest output relative error"
    points = [
        (t["weight_bytes"] / 1024, t["quality"][key], t)
        for t in tried
        if t["quality"][key] is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, color="0.6", label="measured")
    front = sorted((p for p in points if p[2]["pareto"]), key=lambda p: p[0])
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        "o-",
        color="tab:blue",
        ms=4,
        label="Pareto points",
    )
    chosen = search["quality"].get(key)
    limit = search["budget"].get("max_accuracy_drop") if use_accuracy else None
    if limit is not None:
        ax.axhline(limit, color="tab:red", lw=1, ls="--", label=f"budget ({limit:g})")
    if chosen is not None:
        best = min((p for p in points if p[1] == chosen), key=lambda p: p[0], default=None)
        if best is not None:
            ax.scatter(
                [best[0]],
                [best[1]],
                s=80,
                facecolors="none",
                edgecolors="tab:green",
                lw=2,
                label="chosen",
            )
    ax.set_xscale("log")
    ax.set_xlabel("weight bytes (KiB, log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title("prunequant search: size vs quality")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
