"""Distributions: prediction distributions, DDS votes, and divergence against its bound."""

import streamlit as st

from app import components
from fvit_core.report import interactive, style

cur = components.page_header(
    "Prediction distributions, clean vs attacked",
    "The class probabilities of both models on both images, the FViT's per-sample votes, and how far the "
    "distributions moved compared with the FViT's guaranteed bound.",
)
if cur is not None:
    result = cur.result
    components.show_plotly(interactive.plotly_distributions(result), "plot_distributions")
    left, right = st.columns(2, gap="large")
    with left:
        components.show_plotly(interactive.plotly_votes(result), "plot_votes")
    with right:
        components.show_plotly(interactive.plotly_divergence(result), "plot_divergence")
        names = {"kl": "KL", "js": "Jensen–Shannon", "tv": "total variation", "hellinger": "Hellinger",
                 "renyi": f"Rényi D{components.sub(result.config.renyi_alpha)}"}
        st.dataframe(
            [{"Model": style.model_label(result, w),
              **{names.get(k, k): round(v, 4) for k, v in style.comparison(result, w).divergences.items()}}
             for w in style.MODEL_KEYS],
            hide_index=True, width="stretch",
        )
        st.caption(f"Divergences clean → attacked in nats (Rényi of order {result.config.renyi_alpha:g}). The bound "
                   "holds for the FViT's smoothed distribution only; the vanilla ViT has none.")
