"""Export: every figure as PNG / SVG / PDF / interactive HTML, the results, the settings.

Every download button gets its bytes, built once per analysis and kept in the session: a button
whose file is generated on click can lose it when another download reruns the page first.
"""

import streamlit as st

from app import components
from fvit_core.report import export, interactive, overlay, static, style

cur = components.page_header(
    "Export figures, results and settings",
    "Publication figures (single-column width, 300 dpi), interactive HTML (works offline), the result as JSON "
    "and CSV, and a settings file that reproduces this analysis from the command line. Every figure names the "
    "explanation method, σ, N and k; every file name the image, the attack, the method, σ and a digest of all "
    "settings, so exports of different analyses never overwrite each other.",
)
if cur is not None:
    result = cur.result
    stem = export.export_stem(result, cur.image.name)
    photo = cur.image.pixels
    available = {name: (spec.title, lambda s=spec: s.matplotlib(result), lambda s=spec: s.plotly(result))
                 for name, spec in export.RESULT_FIGURES.items()}
    available["on_photo"] = ("Maps on the photo", lambda: overlay.overlay_figure(result, photo),
                             lambda: interactive.plotly_on_photo(result, photo))
    sweep_key, rows = st.session_state.get("_sweep_rows", (None, []))
    rows = rows if sweep_key == cur.key and len(rows) > 1 else None
    if rows:
        sigma = result.config.smoothing.sigma
        available["sigma_sweep"] = ("Sigma sweep", lambda: static.sigma_sweep_figure(rows, sigma),
                                    lambda: interactive.plotly_sigma_sweep(rows, sigma))
    layer_maps = {which: maps for which, memo in (("vanilla", "_layer_maps"), ("fvit", "_fvit_layer_maps"))
                  if (maps := st.session_state.get(memo, {}).get(cur.key)) is not None}
    for name, title, build, build_plotly in export.layer_heads_builders(result, layer_maps):
        available[name] = (title, build, build_plotly)
    st.markdown("#### Figures")
    if st.session_state.get("export_figure") not in available:
        st.session_state["export_figure"] = next(iter(available))
    name = st.selectbox("Figure", list(available), key="export_figure", format_func=lambda n: available[n][0])
    if not rows or len(layer_maps) < 2:
        st.caption("Visit the Sigma sweep (and run it) and both tabs of the Layers page to add their figures here.")
    title, build, build_plotly = available[name]
    extra = (rows is not None and name == "sigma_sweep", tuple(layer_maps) if name.startswith("layer_heads") else ())
    with st.spinner(f"Rendering {title.lower()}…"):
        figure = components.kept_bytes(cur, ("figure", name, extra), build)  # the Figure, built once
        files = {fmt: components.kept_bytes(cur, (name, fmt, extra), lambda f=fmt: export.figure_to_bytes(figure, f))
                 for fmt in style.FIGURE_FORMATS}
        files["html"] = components.kept_bytes(cur, (name, "html", extra), lambda: export.plotly_to_html(build_plotly()))
    buttons = st.columns(4)
    for column, fmt in zip(buttons, style.FIGURE_FORMATS):
        column.download_button(fmt.upper(), data=files[fmt], file_name=f"{stem}_{name}.{fmt}",
                               mime=export.mime_type(fmt), key=f"dl_{fmt}", on_click="ignore")
    buttons[3].download_button("HTML (interactive)", data=files["html"], file_name=f"{stem}_{name}.html",
                               mime="text/html", key="dl_html", on_click="ignore")
    st.image(components.figure_png(cur, name, lambda: figure), caption=f"{title} (preview; single-column width)",
             width=520)

    st.markdown("#### Results and settings")
    image = cur.image
    cols = st.columns(4)
    cols[0].download_button("Result JSON", data=components.kept_bytes(cur, ("json",), lambda: export.result_json(result)),
                            file_name=f"{stem}_result.json", mime="application/json", key="dl_json", on_click="ignore")
    cols[1].download_button("Metrics CSV", data=components.kept_bytes(cur, ("csv",), lambda: export.metrics_csv(result)),
                            file_name=f"{stem}_metrics.csv", mime="text/csv", key="dl_csv", on_click="ignore")
    cols[2].download_button("Settings JSON", data=export.settings_json(result.config),
                            file_name=f"{stem}_settings.json", mime="application/json", key="dl_settings",
                            on_click="ignore")
    cols[3].download_button("Input image", data=image.data, file_name=image.name, key="dl_image", on_click="ignore")

    st.markdown("#### Everything in one ZIP")
    zip_key = ("zip", rows is not None, tuple(layer_maps))
    bundle = components.kept(cur, zip_key)
    if bundle is None:
        st.caption("Every figure in PNG, SVG, PDF and HTML, the result, metrics, settings and input image: "
                   "rendering the figures takes a few seconds.")
        if st.button("Build the ZIP", key="build_zip"):
            bar = st.progress(0.0, text="Building the ZIP…")

            def report(stage: str, fraction: float) -> None:
                bar.progress(min(max(fraction, 0.0), 1.0), text=f"Building the ZIP: {stage.replace('_', ' ')}…")

            bundle = components.kept_bytes(cur, zip_key, lambda: export.export_bundle(
                result, image_name=image.name, image_bytes=image.data, sweep_rows=rows, layer_maps=layer_maps,
                photo=photo, progress=report))
            bar.empty()
    if bundle is not None:
        st.download_button(f"Download the ZIP ({len(bundle) / 1e6:.1f} MB)", data=bundle, key="dl_zip",
                           file_name=f"{stem}.zip", mime="application/zip", on_click="ignore", type="primary")
    st.markdown("Reproduce this analysis from the command line (same image, same settings, same numbers):")
    st.code(export.reproduce_command(image.name, f"{stem}_settings.json"), language="bash")
    if cur.models.kind == "hub":
        st.caption("These models come from the hub: add --allow-download.")
