"""Figures for the report pages, drawn with seaborn/matplotlib from stored summaries and
returned as ``data:image/png;base64`` URIs, so every page is one self-contained file.

Every function takes a summary frame the suites computed from the store and draws it; none
evaluates a model. The corruption examples are images, not numbers: the harness's own
generator applied to a few bundled test images, to show what each corruption looks like.
"""

from __future__ import annotations

import base64
import functools
import io

import matplotlib
import matplotlib.image

matplotlib.use("Agg")  # no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.corruptions import SEVERITIES, corrupt, list_corruptions  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
PALETTE = sns.color_palette("colorblind")


def png_uri(fig) -> str:
    """A finished figure as a PNG data URI (and closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def corruption_heatmap(summary) -> str | None:
    """Accuracy (%) per corruption (rows) x severity (columns) from a cifar10c summary."""
    rows = summary[summary["severity"] > 0]
    if not len(rows):
        return None
    table = rows.pivot_table(index="corruption", columns="severity", values="accuracy",
                             sort=False) * 100
    fig, ax = plt.subplots(figsize=(5.2, 0.32 * len(table) + 1.2))
    sns.heatmap(table, annot=True, fmt=".0f", cmap="rocket", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "accuracy %"}, linewidths=0.5)
    ax.set_xlabel("severity")
    ax.set_ylabel("")
    ax.tick_params(axis="y", rotation=0)
    clean = summary[summary["severity"] == 0]
    if len(clean):
        ax.set_title(f"clean {100 * float(clean['accuracy'].iloc[0]):.1f} %")
    return png_uri(fig)


def eps_curves(points) -> str | None:
    """Accuracy vs eps, one panel per norm; ``points`` has suite, norm, eps, accuracy (the
    clean point, eps 0, is drawn on every panel)."""
    attacked = points[points["norm"] != "none"]
    if not len(attacked):
        return None
    norms = sorted(attacked["norm"].unique())
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.2), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        for i, (suite, group) in enumerate(points.groupby("suite", sort=False)):
            clean = group[group["norm"] == "none"]
            g = group[group["norm"] == norm].sort_values("eps")
            if not len(g):
                continue
            xs = np.concatenate([[0.0], g["eps"].to_numpy()]) if len(clean) else g["eps"]
            ys = (np.concatenate([clean["accuracy"].to_numpy()[:1], g["accuracy"].to_numpy()])
                  if len(clean) else g["accuracy"])
            scale = 255 if norm == "Linf" else 1
            ax.plot(np.asarray(xs) * scale, np.asarray(ys) * 100, marker="o",
                    color=PALETTE[i % len(PALETTE)], label=suite)
        ax.set_xlabel("eps x 255" if norm == "Linf" else "eps (l2)")
        ax.set_ylabel("accuracy %")
        ax.set_ylim(-2, 102)
        ax.set_title(norm)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png_uri(fig)


def sparsity_bars(layers) -> str | None:
    """Exact-zero fraction per hooked layer, with the dead units written on the bars."""
    if layers is None or not len(layers):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 0.3 * len(layers) + 1.0))
    ax.barh(layers["layer"].astype(str), layers["zero_fraction"] * 100,
            color=[PALETTE[2] if c else PALETTE[0] for c in layers.get("codes", [0] * len(layers))])
    for y, (z, dead) in enumerate(zip(layers["zero_fraction"], layers["dead_units"])):
        if dead:
            ax.text(100 * z + 1, y, f"{int(dead)} dead", va="center", fontsize=8, color="#b00")
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("exact zeros % (codes in green)")
    fig.tight_layout()
    return png_uri(fig)


def energy_curves(curves, model_iterations: int | None = None) -> str | None:
    """Mean LCA energy per iteration from the model's start and from zeros (coding suite)."""
    if curves is None or not len(curves):
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    it = curves["iteration"].to_numpy()
    for i, (col, label) in enumerate((("energy", "model's start"), ("energy_cold", "cold (zeros)"))):
        if col in curves:
            ax.plot(np.maximum(it, 0.5), curves[col], color=PALETTE[i], label=label)
    if model_iterations and model_iterations > 0:
        ax.axvline(model_iterations, color="#888", ls=":", lw=1, label="model's iterations")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("iterations (0 drawn at 0.5)")
    ax.set_ylabel("mean energy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_uri(fig)


@functools.lru_cache(maxsize=4)
def corruption_examples(image_index: int = 7, seed: int = 0) -> tuple[str, list[str]]:
    """One bundled test image under every benchmark corruption (rows, names returned) at
    severities 1-5 (columns; the clean image first): one PNG grid from torchvision's
    ``make_grid`` at the images' own resolution (the page scales it up without smoothing)."""
    import torch
    from torchvision.utils import make_grid

    from harness.data import load_sample

    data = load_sample()
    image = torch.from_numpy(np.ascontiguousarray(data.images[image_index:image_index + 1]))
    index = np.array([image_index])
    tiles = []
    names = list_corruptions()
    for name in names:
        tiles.append(image[0])
        for severity in SEVERITIES:
            tiles.append(corrupt(image, name, severity, seed=seed, indices=index)[0])
    grid = make_grid(torch.stack(tiles), nrow=1 + len(SEVERITIES), padding=2, pad_value=255)
    buf = io.BytesIO()  # the uint8 pixels as they are (matplotlib's PNG writer, no resampling)
    matplotlib.image.imsave(buf, grid.permute(1, 2, 0).contiguous().numpy(), format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), names
