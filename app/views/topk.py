"""Top-k: the overlap V_k of clean and attacked focal patches for every k."""

import streamlit as st

from app import components
from fvit_core.report import interactive

cur = components.page_header(
    "Top-k overlap as a function of k",
    "Vₖ = share of the clean top-k patches still in the attacked top-k. The dashed line is chance (two random "
    "top-k sets); the square is the FViT's noise floor at the chosen k.",
)
if cur is not None:
    result = cur.result
    components.show_plotly(interactive.plotly_overlap_curve(result), "plot_overlap_curve")
    st.caption(components.floor_verdict(result))
