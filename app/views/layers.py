"""Layers and heads: the [CLS] attention of the vanilla ViT and of the Faithful ViT in every block and head."""

import numpy as np
import streamlit as st

from app import analysis_settings, components, session
from fvit_core.report import interactive, static, style

cur = components.page_header(
    "Where the attack acts: attention per layer and head",
    "[CLS]-row attention on the patches in every block and head, clean (left half) vs attacked (right half); "
    "each row has its own colour scale, shared by clean and attacked. The Faithful ViT's maps are the mean over "
    "its noise samples (same σ, N and seed as the analysis). Hover a patch for its weight.",
)
if cur is not None:
    result = cur.result
    k = result.config.explanation.k
    subtitle = style.settings_text(result)
    tabs = st.tabs(["Vanilla ViT", style.model_label(result, "fvit")])
    for tab, which, compute in zip(tabs, style.MODEL_KEYS, (session.layer_maps, session.fvit_layer_maps)):
        with tab:
            label = style.model_label(result, which)
            try:
                with st.spinner(f"Computing the {label}'s per-layer maps…"):
                    maps = compute(cur)
            except Exception as exc:
                st.error(analysis_settings.error_message("Cannot compute the per-layer maps", exc))
                continue
            overlap = static.layer_head_overlap(maps, k)
            left, right = st.columns([3, 2], gap="large")
            with left:
                components.show_plotly(interactive.plotly_layer_heads(maps, result.grid_size, model=label, subtitle=subtitle,
                                                                      images=(result.clean_view, result.attacked_view)),
                                       f"plot_layers_{which}")
            with right:
                st.markdown(f"**Top-{k} overlap V{components.sub(k)} per layer and head** (clean vs attacked)")
                heads = [f"head {h + 1}" for h in range(overlap.shape[1])]
                st.dataframe({name: np.round(overlap[:, h], 2) for h, name in enumerate(heads)}
                             | {"layer": [f"layer {i + 1}" for i in range(overlap.shape[0])]},
                             hide_index=True, column_order=["layer", *heads], key=f"table_layers_{which}")
                st.caption("Low values show the heads whose focal patches the attack moved most.")
