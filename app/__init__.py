"""The FViT dashboard (streamlit run app/streamlit_app.py).

The libraries its pages import lazily are imported here, once, when the first session imports
the package: Streamlit runs each session's script in its own thread, and five first visits at
once raised "partially initialized module 'pandas'" when they imported pandas together (issue
26). Importing ``app`` is serialised by Python's import lock, so the others wait for this.
"""

import matplotlib  # figures and exports
import pandas  # st.dataframe, the metrics table
import plotly.graph_objects  # the interactive maps

WARMED = (matplotlib, pandas, plotly.graph_objects)
