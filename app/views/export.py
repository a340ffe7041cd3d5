"""Export: every figure as PNG / SVG / PDF / interactive HTML, the results, the settings."""

import streamlit as st

from app import components
from fvit_core import figures

cur = components.page_header(
    "Export figures, results and settings",
    "Publication figures (single-column width, 300 dpi), interactive HTML (works offline), the result as JSON "
    "and CSV, and a settings file that reproduces this analysis from the command line.",
)
if cur is not None:
    result = cur.result
    available = {name: (spec.title, lambda s=spec: s.matplotlib(result), lambda s=spec: s.plotly(result))
                 for name, spec in figures.RESULT_FIGURES.items()}
    sweep_key, rows = st.session_state.get("_sweep_rows", (None, []))
    rows = rows if sweep_key == cur.key and len(rows) > 1 else None
    if rows:
        sigma = result.config.sigma
        available["sigma_sweep"] = ("Sigma sweep", lambda: figures.sigma_sweep_figure(rows, sigma),
                                    lambda: figures.plotly_sigma_sweep(rows, sigma))
    maps = st.session_state.get("_layer_maps", {}).get(cur.key)
    if maps is not None:
        available["layer_heads"] = ("Layers and heads", lambda: figures.layer_heads_figure(maps, result.grid_size),
                                    lambda: figures.plotly_layer_heads(maps, result.grid_size))
    st.markdown("#### Figures")
    name = st.selectbox("Figure", list(available), key="export_figure", format_func=lambda n: available[n][0])
    if not rows or maps is None:
        st.caption("Visit the Sigma sweep (and run it) and the Layers page to add their figures here.")
    title, build, build_plotly = available[name]
    buttons = st.columns(4)
    for column, fmt in zip(buttons, figures.FIGURE_FORMATS):
        column.download_button(fmt.upper(), data=lambda f=fmt: figures.figure_to_bytes(build(), f),
                               file_name=f"{name}.{fmt}", mime=figures.mime_type(fmt), key=f"dl_{fmt}")
    buttons[3].download_button("HTML (interactive)", data=lambda: figures.plotly_to_html(build_plotly()),
                               file_name=f"{name}.html", mime="text/html", key="dl_html")
    components.show_figure(cur, name, build, caption=f"{title} (preview; single-column width)", width=520)

    st.markdown("#### Results and settings")
    image = cur.image
    cols = st.columns(5)
    cols[0].download_button("Result JSON", data=lambda: figures.result_json(result), file_name="result.json",
                            mime="application/json", key="dl_json")
    cols[1].download_button("Metrics CSV", data=lambda: figures.metrics_csv(result), file_name="metrics.csv",
                            mime="text/csv", key="dl_csv")
    cols[2].download_button("Settings JSON", data=figures.settings_json(result.config), file_name="settings.json",
                            mime="application/json", key="dl_settings")
    cols[3].download_button("Input image", data=image.data, file_name=image.name, key="dl_image")
    cols[4].download_button(
        "Everything (ZIP)", key="dl_zip", file_name="fvit_analysis.zip", mime="application/zip",
        data=lambda: figures.export_bundle(result, image_name=image.name, image_bytes=image.data,
                                           sweep_rows=rows, layer_maps=maps))
    st.markdown("Reproduce this analysis from the command line (same image, same settings, same numbers):")
    st.code(figures.reproduce_command(image.name), language="bash")
    if cur.models.kind == "hub":
        st.caption("These models come from the hub: add --allow-download.")
