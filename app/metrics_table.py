"""The explanation-robustness metrics of one analysis as a table: vanilla ViT, FViT, FViT floor.

One row per metric of docs/METRICS.md (V_k, the map metrics, the neighbourhood sensitivity),
clean vs attacked for each model; the floor column is the same metric between two clean FViT
estimates (Monte Carlo noise only), so an FViT value is an attack effect only beyond it.
"""

from __future__ import annotations

from fvit_core.metrics import MAP_METRICS
from fvit_core.analysis.result import AnalysisResult

_LABELS = {"spearman": "Spearman rank correlation", "kendall": "Kendall's tau", "pearson": "Pearson correlation",
           "ssim": "SSIM on the patch grid", "centroid_shift": "centroid shift (patches, lower = steadier)",
           "topk_mass": "attacked mass in the clean top-k"}
COLUMNS = ("metric", "vanilla ViT", "FViT", "FViT noise floor")


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_rows(result: AnalysisResult) -> list[dict[str, str]]:
    """The table's rows as plain strings (keys: COLUMNS); 'n/a' where a value is undefined or off."""
    k = result.config.explanation.k
    floor_maps = result.faithful.map_metrics_floor or {}
    rows = [{"metric": f"top-{k} overlap V_{k}", "vanilla ViT": _cell(result.vanilla.topk_overlap),
             "FViT": _cell(result.fvit.topk_overlap), "FViT noise floor": _cell(result.faithful.topk_overlap_floor)}]
    for name in MAP_METRICS:
        rows.append({"metric": _LABELS[name], "vanilla ViT": _cell(result.vanilla.map_metrics.get(name)),
                     "FViT": _cell(result.fvit.map_metrics.get(name)), "FViT noise floor": _cell(floor_maps.get(name))})
    v_sens, f_sens = result.vanilla.sensitivity or {}, result.fvit.sensitivity or {}
    for key, label in (("max", "max-sensitivity"), ("mean", "avg-sensitivity")):
        rows.append({"metric": label, "vanilla ViT": _cell(v_sens.get(key)), "FViT": _cell(f_sens.get(key)),
                     "FViT noise floor": _cell(f_sens.get("floor"))})
    return rows


def show(result: AnalysisResult) -> None:
    """Render the table under a heading (Streamlit)."""
    import streamlit as st

    st.markdown("#### Explanation-robustness metrics, clean vs attacked")
    st.dataframe(metrics_rows(result), hide_index=True, width="stretch")
    st.caption("Noise floor: the same metric between two clean FViT estimates (sampling noise only). "
               "Sensitivity: n/a unless Advanced > sensitivity perturbations (CLI --sensitivity-samples) is set. "
               "Definitions: docs/METRICS.md.")
