from rewardlab.study.report import _md_table


def test_markdown_table_keeps_pipeline_specs_in_their_cell():
    text = _md_table([["strategy", "spec"], ["running_norm+clip", "`running_norm|clip(lo=-5,hi=5)`"]])
    header, rule, row = text.splitlines()
    assert rule == "|---|---|"
    assert row == "| running_norm+clip | `running_norm\\|clip(lo=-5,hi=5)` |"
    # unescaped pipes delimit exactly the two cells
    assert row.replace("\\|", "").count("|") == header.count("|") == 3
