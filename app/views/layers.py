"""Layers and heads: the vanilla ViT's [CLS] attention in every block and head."""

import numpy as np
import streamlit as st

from app import components, session
from fvit_core import figures

cur = components.page_header(
    "Where the attack acts: attention per layer and head (vanilla ViT)",
    "[CLS]-row attention on the patches in every block and head, clean (left) vs attacked (right); each row "
    "has its own colour scale, shared by clean and attacked.",
)
if cur is not None:
    result = cur.result
    try:
        maps = session.layer_maps(cur)
    except ValueError as exc:
        st.error(f"Cannot compute the per-layer maps: {exc}")
    else:
        k = result.config.k
        overlap = figures.layer_head_overlap(maps, k)
        left, right = st.columns([3, 2], gap="large")
        with left:
            components.show_figure(cur, "layer_heads", lambda: figures.layer_heads_figure(maps, result.grid_size))
        with right:
            st.markdown(f"**Top-{k} overlap V{components.sub(k)} per layer and head** (clean vs attacked)")
            st.dataframe({f"head {h + 1}": np.round(overlap[:, h], 2) for h in range(overlap.shape[1])}
                         | {"layer": [f"layer {i + 1}" for i in range(overlap.shape[0])]},
                         hide_index=True, column_order=["layer", *[f"head {h + 1}" for h in range(overlap.shape[1])]])
            st.caption("Low values show the heads whose focal patches the attack moved most.")
