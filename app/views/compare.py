"""Compare: where each model looks on the clean and the attacked image, and what that costs."""

import streamlit as st

from app import components, metrics_table
from fvit_core.report import interactive, style

cur = components.page_header(
    "Vanilla ViT vs Faithful ViT: do the focal points survive the attack?",
    "Attention over the clean and the attacked image; cyan boxes are the top-k focal patches, dotted white "
    "boxes the clean top-k patches that the attack pushed out. All four maps share one colour scale; hover a "
    "patch for its weight and rank on both images, drag to zoom, double-click to reset.",
)
if cur is not None:
    result = cur.result
    scale = style.map_scale(result)
    columns = st.columns(2, gap="medium")
    for column, which in zip(columns, style.MODEL_KEYS):
        with column:
            st.markdown(f"#### {style.model_label(result, which)}")
            components.show_plotly(interactive.plotly_attention_maps(result, which, scale=scale), f"maps_{which}")
            components.overlap_cards(result, which)
            components.prediction_cards(result, which)
            if which == "fvit":
                components.certificate_cards(result)
    st.markdown("#### On your photo")
    components.show_on_photo(cur, scale)
    metrics_table.show(result)
    st.markdown("#### Inputs")
    components.show_inputs(cur)
