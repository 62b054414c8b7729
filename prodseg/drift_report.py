"""The HTML drift report of ``prodseg drift report``: one self-contained file, plots as inline PNGs.

Each numeric feature gets the reference and window histograms with its KS, PSI and Wasserstein
numbers; each class mix gets side-by-side shares with its chi-square test. matplotlib (training
extras) is imported here only, so serving code never loads it.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from clients.drift import DriftReference, Sample


def render_html(report: dict, reference: DriftReference, samples: list[Sample], source: str) -> str:
    status = report["status"]
    colour = {"ok": "#1a7f37", "drift": "#cf222e"}.get(status, "#9a6700")
    rows, plots = [], []
    for name, result in report["features"].items():
        rows.append(_row(name, result))
        plots.append(_figure(name, result, reference, samples))
    version = report["version"] if report["version"] is not None else "?"
    summary = (
        f"{len(samples)} images from {html.escape(source)} against {report['reference_samples']} reference "
        f"images of {html.escape(report['model'])} v{version}; alpha {report['alpha']} family-wise "
        f"(Bonferroni over {report.get('tests', 0)} features); the window drifts when at least "
        f"{report['min_drifted']} feature(s) drift."
    )
    if status == "insufficient_data":
        summary += f" Fewer than {report['min_samples']} images: no verdict."
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report: {html.escape(report["model"])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr.drifted {{ background: #ffebe9; }}
.status {{ color: white; background: {colour}; padding: 2px 10px; border-radius: 4px; }}
figure {{ display: inline-block; margin: 4px; }}
</style></head><body>
<h1>Drift report: {html.escape(report["model"])} <span class="status">{status}</span></h1>
<p>{summary}</p>
<table><tr><th>feature</th><th>test</th><th>statistic</th><th>p (corrected)</th><th>PSI</th>
<th>Wasserstein (ref. std)</th><th>drifted</th></tr>
{"".join(rows)}
</table>
<h2>Distributions</h2>
{"".join(plots)}
</body></html>
"""


def _row(name: str, result: dict) -> str:
    numeric = result["kind"] == "numeric"
    psi = f"{result['psi']:.3f}" if numeric else ""
    wasserstein = f"{result['wasserstein']:.3f}" if numeric else ""
    css = ' class="drifted"' if result["drifted"] else ""
    return (
        f"<tr{css}><td>{html.escape(name)}</td><td>{result['test']}</td><td>{result['statistic']:.4g}</td>"
        f"<td>{result['p_value_corrected']:.3g}</td><td>{psi}</td><td>{wasserstein}</td>"
        f"<td>{'yes' if result['drifted'] else 'no'}</td></tr>"
    )


def _figure(name: str, result: dict, reference: DriftReference, samples: list[Sample]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 2.4), dpi=90)
    if result["kind"] == "numeric":
        ref = reference.numeric[name]
        window = np.array([s.numeric[name] for s in samples])
        bins = np.histogram_bin_edges(np.concatenate([ref, window]), bins=20)
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(window, bins=bins, density=True, alpha=0.5, label="window")
        ax.set_title(f"{name}  KS p={result['p_value_corrected']:.2g}", fontsize=9)
    else:
        names = list(result["reference_share"])
        x = np.arange(len(names))
        ax.bar(x - 0.2, list(result["reference_share"].values()), 0.4, label="reference")
        ax.bar(x + 0.2, list(result["window_share"].values()), 0.4, label="window")
        ax.set_xticks(x, names, rotation=30, fontsize=7)
        ax.set_title(f"{name}  chi2 p={result['p_value_corrected']:.2g}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"></figure>'
