"""Overview: every run under the runs folder in one table, unreadable runs with their error,
and two of the selected runs compared, with the verdicts on the seed's claims."""

import streamlit as st

import common

st.title("Overview")
st.caption("Every run under the runs folder. Pick the runs the other pages show in the sidebar.")


def body():
    if common.empty_state(need_selection=False):
        return
    digests = common.all_digests()
    table = common.overview_table(digests)
    if len(table):
        st.dataframe(common.colored(table, "status", common.STATUS_COLORS), hide_index=True,
                     column_config=common.OVERVIEW_COLUMNS, key="overview-table",
                     placeholder="—")
    for d in digests:
        if not d.ok:
            common.show_error(d.error, d.label)
    for d in digests:
        if d.ok and d.warnings:
            st.warning("Read with warnings (some rows may be missing):", icon=":material/warning:")
            st.text("\n".join([d.label] + [f"  {w}" for w in d.warnings]))

    selected = [d for d in common.selected_digests() if d.ok]
    if len(selected) >= 2:
        st.header("Comparison")
        st.caption("Two of the selected runs side by side: which converged faster, which was "
                   "more stable, and the verdicts this pair gives on the seed analysis's claims "
                   "C1–C10.")
        names = {str(d.path): d.label for d in selected}
        c1, c2 = st.columns(2)
        a = common.select("(a)", list(names), key="cmp_a", where=c1, format_func=names.get)
        b = common.select("(b)", [p for p in names if p != a], key="cmp_b", where=c2,
                          format_func=names.get)
        comp = common.comparison(a, b)
        pair, claims = common.comparison_tables(comp, names[a], names[b])
        with st.container(border=True):
            common.text_table(pair, [2, 2, 8])
            st.divider()
            common.text_table(claims, [0.6, 4, 1.6, 6], badges={"verdict": common.VERDICT_BADGES})

    ok = [d for d in digests if d.ok]
    if ok:
        st.header("Run details")
        pick = common.select("Run", [str(d.path) for d in ok], key="details_run",
                             format_func={str(d.path): d.label for d in ok}.get)
        d = next(x for x in ok if str(x.path) == pick)
        st.code(str(d.path), language=None)
        st.dataframe(common.config_table(d.manifest), hide_index=True, key="details-config")
        versions = d.manifest.get("versions") if isinstance(d.manifest.get("versions"),
                                                             dict) else {}
        if versions:
            st.text("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))


common.live(body, watch=common.all_digests)
