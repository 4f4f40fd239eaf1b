"""mambascope's app: every run under a folder, side by side, live while a run trains.

    streamlit run app/main.py                       # the runs under runs/
    streamlit run app/main.py -- --runs-dir runs/demo
    make app

The entry point only routes (``st.navigation``) and draws the sidebar; each page (``views/``)
calls the helpers of ``common.py``, the one reader, the analyzers and the figures module the
HTML report uses. The pages are not in a folder named ``pages/``: Streamlit treats such a folder
as a legacy multipage app, whose deep links (``/convergence``) run the page file alone, without
this entry point and its sidebar.
"""

import streamlit as st

import common

st.set_page_config(page_title="mambascope", page_icon="🔬", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/table_chart:",
            url_path="overview", default=True),
    st.Page("views/convergence.py", title="Convergence", icon=":material/show_chart:",
            url_path="convergence"),
    st.Page("views/layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page("views/ssm.py", title="SSM internals", icon=":material/memory:", url_path="ssm"),
    st.Page("views/maps.py", title="Scan paths vs attention", icon=":material/grid_on:",
            url_path="maps"),
    st.Page("views/findings.py", title="Findings", icon=":material/flag:", url_path="findings"),
    st.Page("views/remedies.py", title="Remedies", icon=":material/healing:",
            url_path="remedies"),
]

page = st.navigation(PAGES)
common.sidebar()
page.run()
