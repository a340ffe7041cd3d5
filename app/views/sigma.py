"""Sigma sweep: top-k overlap, confidence and certified radii over a grid of noise levels."""

import streamlit as st

from app import components, session
from fvit_core.report import interactive, style
from fvit_core.analysis.sweep import DEFAULT_SIGMAS, sweep_row

SIGMA_CHOICES = (0.03, 0.06, 0.12, 0.18, 0.25, 0.37, 0.5, 0.75, 1.0)

cur = components.page_header(
    "How the noise level σ trades faithfulness for accuracy",
    "Each point is a full analysis at that σ with the same image, attack and seed (the attacked image is the "
    "same at every σ). The dotted line marks the current σ.",
)
if cur is not None:
    st.session_state.setdefault("sweep_sigmas", list(DEFAULT_SIGMAS))
    sigmas = st.multiselect("σ grid (pixel units)", SIGMA_CHOICES, key="sweep_sigmas")
    done, missing = session.sweep_status(cur, sigmas)
    if missing:
        seconds = cur.result.timing["total"] * len(missing)
        st.info(f"{len(missing)} of {len(missing) + len(done)} points still to compute (about {seconds:.0f} s).")
        if st.button("Run sweep", key="run_sweep", type="primary"):
            if session.run_sweep(cur, missing):
                st.rerun()  # redraw without the now-finished "still to compute" note
    rows = [sweep_row(r) for r in done]
    st.session_state["_sweep_rows"] = (cur.key, rows)
    if len(rows) > 1:
        components.show_plotly(interactive.plotly_sigma_sweep(rows, cur.result.config.smoothing.sigma), "plot_sigma_sweep")
    # Readable headers, one interval column, one prediction column: the table fits a laptop's width
    # (the CSV export keeps every field under its own name).
    shown = [{**row, "fvit_ci": (f"{row['fvit_overlap_ci_low']:.2f}–{row['fvit_overlap_ci_high']:.2f}"
                                 if row["fvit_overlap_ci_low"] is not None else "n/a"),
              "fvit_labels": f"{row['fvit_clean_label']} → {row['fvit_attacked_label']}",
              "class_radius_shown": "abstain" if row["abstain"] else f"{row['class_radius']:.3f}"}
             for row in rows]
    columns = {
        "sigma": ("σ", "%.2f"), "vanilla_overlap": ("Vanilla Vₖ", "%.2f"), "fvit_overlap": ("FViT Vₖ", "%.2f"),
        "fvit_ci": ("FViT 95% CI", None), "noise_floor": ("Noise floor", "%.2f"),
        "fvit_labels": ("FViT label", None), "fvit_attacked_confidence": ("Confidence", "%.2f"),
        "class_radius_shown": ("Class radius", None), "topk_radius_l2": ("Top-k L2", "%.4f"),
        "topk_radius_linf": ("Top-k L∞", "%.5f"), "t_star": ("t*", "%d"),
    }
    config = {name: (st.column_config.NumberColumn(label, format=fmt) if fmt else st.column_config.TextColumn(label))
              for name, (label, fmt) in columns.items()}
    st.dataframe(shown, hide_index=True, column_order=tuple(columns), column_config=config, width="stretch")
    if rows:
        st.caption(f"Vₖ at k = {rows[0]['k']}; {style.method_name(rows[0]['method'])}, N = {rows[0]['n_samples']}; FViT label: clean → attacked; "
                   "radii in pixel units (L∞ = L2 / √(3HW)).")
