"""Figures people would rather look at than read; each returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files and logged to MLflow
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def per_class_f1_bars(labels: Sequence[str], f1_by_model: dict[str, np.ndarray], k: int):
    """Side-by-side bars of each model's top-k F1 per class (classes without positives left blank)."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * n + 2), 4))
    width = 0.8 / max(1, len(f1_by_model))
    x = np.arange(n)
    for i, (name, f1) in enumerate(f1_by_model.items()):
        ax.bar(x + i * width - 0.4 + width / 2, np.nan_to_num(f1) * 100, width, label=name)
    ax.set_xticks(x, labels, rotation=60, ha="right")
    ax.set_ylabel(f"top-{k} F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class top-{k} F1 on the test split")
    ax.legend()
    fig.tight_layout()
    return fig


def training_curves(history_by_model: dict[str, list[dict[str, float]]]):
    """Loss (own scale per model) and validation metrics per epoch."""
    keys = sorted({k for h in history_by_model.values() for r in h for k in r if k.startswith("val_")})
    fig, axes = plt.subplots(1, 1 + bool(keys), figsize=(11.5 if keys else 5, 3.5), squeeze=False)
    ax = axes[0, 0]
    for name, history in history_by_model.items():
        epochs = [r["epoch"] for r in history]
        losses = np.array([r["loss"] for r in history])
        ax.plot(epochs, losses / max(losses[0], 1e-12), marker="o", label=f"{name} (÷{losses[0]:.3g})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss / first epoch's")
    ax.legend()
    if keys:
        ax = axes[0, 1]
        styles = ("-", "--", ":", "-.")  # one colour per model (as in the loss panel), one line style per metric
        for colour, (name, history) in enumerate(history_by_model.items()):
            for style, key in zip(styles * len(keys), keys, strict=False):
                pts = [(r["epoch"], r[key]) for r in history if key in r]
                if pts:
                    e, v = zip(*pts, strict=True)
                    ax.plot(e, np.array(v) * 100, marker=".", color=f"C{colour}", linestyle=style,
                            label=f"{name} {key[4:]}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("validation (%)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def label_vector_map(labels: Sequence[str], vectors: np.ndarray, highlight: Sequence[str] = ()):
    """The label word vectors projected to 2-D (PCA), each point named; `highlight` in another colour."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    if len(labels) >= 2:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
    else:
        xy = np.zeros((len(labels), 2))
    fig, ax = plt.subplots(figsize=(6, 5))
    marked = np.array([label in set(highlight) for label in labels])
    ax.scatter(xy[~marked, 0], xy[~marked, 1], c="tab:blue", label="trained")
    if marked.any():
        ax.scatter(xy[marked, 0], xy[marked, 1], c="tab:red", label="held out")
        ax.legend()
    for (px, py), label in zip(xy, labels, strict=True):
        ax.annotate(label, (px, py), textcoords="offset points", xytext=(3, 3), fontsize=8)
    ax.set_title("Label word vectors (PCA)")
    fig.tight_layout()
    return fig


def reliability_diagram(by_model: dict[str, tuple[np.ndarray, np.ndarray]], n_bins: int = 10):
    """Observed frequency of relevance against calibrated probability, per model: (p (N, L), 0/1 targets).

    Images without any positive label are left out, as in evaluation; a calibrated model follows
    the diagonal.
    """
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    edges = np.linspace(0, 1, n_bins + 1)
    for name, (probabilities, targets) in by_model.items():
        keep = np.asarray(targets).any(axis=1)
        p, t = np.asarray(probabilities)[keep].ravel(), np.asarray(targets)[keep].ravel()
        which = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
        filled = [b for b in range(n_bins) if (which == b).any()]
        ax.plot([p[which == b].mean() for b in filled], [t[which == b].mean() for b in filled], marker="o", label=name)
    ax.set_xlabel("calibrated probability (test)")
    ax.set_ylabel("fraction relevant")
    ax.set_title("Reliability of the thresholded decision's scores")
    ax.legend()
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
