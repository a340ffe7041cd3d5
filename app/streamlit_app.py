"""FViT dashboard: attack an image and compare where the vanilla ViT and the Faithful ViT look.

Run with ``streamlit run app/streamlit_app.py``. The sidebar holds every setting; this script
keeps the current analysis in step with it (computing with a progress bar, or waiting for a click
when the settings are expensive), then runs the selected page, which only renders.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import model_sources, session, sidebar  # noqa: E402

if not model_sources.downloads_allowed():  # nothing reaches a model hub unless the operator allows it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
elif not model_sources.hub_checked():  # downloads allowed but no network: the cache only, no 50 s of retries
    os.environ["HF_HUB_OFFLINE"] = "1"
    from fvit_core.models.common import HUB_UNREACHABLE_ENV, hub_host

    os.environ[HUB_UNREACHABLE_ENV] = hub_host()

# The page icon is a local file: a Material icon name would make every page load fetch an SVG
# from a font host (nothing may leave the machine).
st.set_page_config(page_title="FViT: faithful attention under attack", page_icon=str(ROOT / "app" / "favicon.png"),
                   layout="wide")

PAGES = [
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", default=True),
    st.Page("views/distributions.py", title="Distributions", icon=":material/bar_chart:"),
    st.Page("views/topk.py", title="Top-k", icon=":material/show_chart:"),
    st.Page("views/sigma.py", title="Sigma sweep", icon=":material/tune:"),
    st.Page("views/layers.py", title="Layers and heads", icon=":material/layers:"),
    st.Page("views/export.py", title="Export", icon=":material/download:"),
]

page = st.navigation(PAGES)
values = sidebar.render(session.model_input)
session.update(values)
page.run()
session.freeze_long_lived_objects()
session.start_memory_janitor()
