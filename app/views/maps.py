"""Scan paths vs attention: each selected run's maps on the same probe image, side by side, with
the agreement numbers (diagnostics.maps / maps_figures, as `diagnose maps` draws them)."""

import streamlit as st

import common

st.title("Scan paths vs attention")
st.caption("Mamba's hidden attention (the matrix its selective scan applies; SS2D: the four scan "
           "directions put back on the image and summed) next to ViT's attention, per layer and "
           "rolled out, with gradient attributions and effective receptive fields, on the same "
           "probe images; then how much they agree.")


def body():
    if common.empty_state():
        return
    paths = [d.path for d in common.selected_digests() if d.ok]
    sets, scores, notes, without = common.maps_of(paths)
    if without:
        st.info(("None of the selected runs has" if not sets else "Some selected runs have no")
                + " maps recorded. Compute them from each run's checkpoint (for both backbones "
                "at once, so they are scored on the same images):", icon=":material/map:")
        st.code(common.maps_command(without), language="bash", wrap_lines=True)
    if not sets:
        return
    for n in notes:
        st.text(n)
    st.dataframe(common.maps_sets_table(sets), hide_index=True, key="maps-sets")
    esc, esc_scores = common.for_plotly(sets, scores)

    first = sets[0]
    c1, c2 = st.columns(2)
    image = common.select("Probe image", list(range(first.num_images)), key="maps_image",
                          where=c1, format_func=lambda i: (f"image {i} (item {first.image_ids[i]})"
                                                if i < len(first.image_ids) else f"image {i}"))
    query = common.select("Query token", common.query_options(first), key="maps_query",
                          where=c2, format_func=common.query_label(first),
                          help="Whose row of each map is drawn: the token the head reads, or "
                               "one patch (marked with a cross).")
    st.subheader("Maps on the same image")
    st.caption("A row per run: the image (green: the foreground mask), each layer's map, the "
               "rollout over the layers and the attributions, each scaled to its own maximum.")
    common.safe_figure(lambda: common.maps_figures().map_panels_figure(esc, image, query=query),
                       "maps-panels")

    if scores is not None and len(scores):
        st.subheader("How much they agree")
        st.caption("Per layer and for the rollout: Pearson correlation with the reference run "
                   "(the first attention backbone) for the same query token, entropy of the "
                   "rows (nats), mean attention distance (patches), and how much of the output "
                   "map falls on the foreground (mask energy; a uniform map gets the mask's "
                   "area).")
        st.dataframe(common.maps_numbers(scores), hide_index=True, key="maps-numbers")
        common.safe_figure(lambda: common.maps_figures().scores_figure(esc_scores), "maps-scores")

    ssm = [s for s in esc if s.direction_maps is not None]
    if ssm:
        st.subheader("Scan directions of one SSM layer")
        ms = ssm[0]
        layer = common.select("SSM layer", list(range(len(ms.layer_ids))),
                              index=len(ms.layer_ids) - 1, key="maps_ssm_layer",
                              format_func=lambda p: f"layer {int(ms.layer_ids[p])}")
        common.safe_figure(lambda: common.maps_figures().direction_figure(
            ms, min(image, ms.num_images - 1), layer=layer, query=query), "maps-directions",
            width="content")
    if any(s.erf is not None for s in esc):
        st.subheader("Effective receptive field")
        common.safe_figure(lambda: common.maps_figures().erf_figure(esc), "maps-erf",
                           width="content")


common.live(body)
