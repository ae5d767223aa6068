"""`tsh clusters` and `tsh ls` rendering (tsh._core.listing), and the CLI's argument parsers."""

from __future__ import annotations

import json

import pytest
import yaml

from tsh._authapi.session import parse_proxysites
from tsh._core.listing import (
    ClusterInfo,
    NodeInfo,
    render_clusters,
    render_nodes,
    render_table,
    sorted_labels,
)
from tsh._exceptions import AuthAPIError, UsageError
from tsh.cli.ls import parse_label_args, parse_search

ROWS = [
    ClusterInfo("root", "online", "root", None, False),
    ClusterInfo("leaf", "offline", "leaf", {"b": "2", "a": "1"}, True),
]


def test_table_is_go_tabwriter_with_trailing_padding() -> None:
    assert render_table(["A", "Long header"], [["x", "y"], ["wider", ""]]) == (
        "A     Long header \n"
        "----- ----------- \n"
        "x     y           \n"
        "wider             \n"
    )
    assert render_table(["A", "B"], [["x", "y"]], headless=True) == "x    y    \n"  # min width 5


def test_clusters_text_quiet_json_yaml() -> None:
    assert render_clusters(ROWS) == (
        "Cluster Name Status  Cluster Type Labels  Selected \n"
        "------------ ------- ------------ ------- -------- \n"
        "root         online  root                          \n"
        "leaf         offline leaf         a=1,b=2 *        \n"
    )
    quiet = render_clusters(ROWS, quiet=True)
    assert quiet == "root online  root         \nleaf offline leaf a=1,b=2 \n"
    data = json.loads(render_clusters(ROWS, "json"))
    assert data[0] == {"cluster_name": "root", "status": "online", "cluster_type": "root",
                       "labels": None, "selected": False}  # fmt: skip
    assert yaml.safe_load(render_clusters(ROWS, "yaml")) == data


def test_ls_label_order_and_columns() -> None:
    labels = {"teleport.dev/origin": "x", "z": "1", "a/b": "2", "env": "prod"}
    assert sorted_labels(labels) == "env=prod,z=1,a/b=2,teleport.dev/origin=x"
    nodes = [NodeInfo("id-2", "web2", "10.0.0.2:22", {}, tunnel=True),
             NodeInfo("id-1", "web1", "10.0.0.1:22", {"env": "prod"})]  # fmt: skip
    assert render_nodes(nodes) == (
        "Node Name Address     Labels   \n"
        "--------- ----------- -------- \n"
        "web1      10.0.0.1:22 env=prod \n"
        "web2      ⟵ Tunnel             \n"
    )
    verbose = render_nodes(nodes, verbose=True).splitlines()
    assert verbose[2].split() == ["web1", "id-1", "10.0.0.1:22", "env=prod"]
    assert render_nodes(nodes, "names") == "web1\nweb2\n"
    assert [n["metadata"]["name"] for n in json.loads(render_nodes(nodes, "json"))] == ["id-1", "id-2"]
    assert render_nodes([], "json") == "[]\n"


def test_hostile_strings_reach_the_terminal_printable() -> None:
    out = render_nodes([NodeInfo("id", "evil\x1b]0;x\x07", "1.2.3.4:22", {"k": "v\r\n"})])
    assert "\x1b" not in out and "\r" not in out and "evil?]0;x?" in out


def test_label_and_search_arguments() -> None:
    assert parse_label_args(["env=prod,team=a", "os=linux"]) == {"env": "prod", "team": "a", "os": "linux"}
    with pytest.raises(UsageError, match="expected key=value"):
        parse_label_args(["env"])
    assert parse_search('foo,bar,"some phrase, with comma"') == ["foo", "bar", "some phrase, with comma"]
    assert parse_search(None) == []


def test_proxysites_answer_is_checked() -> None:
    data = b'[{"name":"root","status":"online"},{"name":"leaf","status":"weird"}]'
    assert parse_proxysites(data) == [("root", "online"), ("leaf", "offline")]
    for bad in (b"nope", b'[{"name":"../x"}]', b"[1]", b'{"name":"x"}'):
        with pytest.raises(AuthAPIError, match="malformed"):
            parse_proxysites(bad)


def test_ls_cuts_labels_to_the_terminal_as_real_tsh() -> None:
    from tsh._core.listing import fit_to_width

    long = {f"k{i:02d}": "v" * 8 for i in range(12)}
    nodes = [NodeInfo("id-1", "web1", "10.0.0.1:22", long)]
    full = sorted_labels(long)
    lines = render_nodes(nodes, width=80).splitlines()
    # 16 for Labels, the rest shared: Node Name and Address fit (10 + 12 with separators),
    # Labels gets 80 - 22 - len("... ") = 54 characters and "...".
    assert lines[2] == f"web1      10.0.0.1:22 {full[:54]}... "
    assert len(lines[2]) == 80
    assert render_nodes(nodes).splitlines()[2].endswith(f"{full} ")  # no width: uncut
    assert full in render_nodes(nodes, verbose=True, width=80)  # -v: uncut
    assert render_nodes(nodes, "names", width=80) == "web1\n"

    # A column longer than its share (32 of 80) is cut too, and Labels gets the rest.
    headers = ["Node Name", "Address", "Labels"]
    rows = fit_to_width(headers, [["h" * 40, "10.0.0.1:22", "x" * 60]], "Labels", 80)
    assert rows == [["h" * 32 + "...", "10.0.0.1:22", "x" * 28 + "..."]]
    # Short cells are left alone; a tiny terminal still leaves one character.
    assert fit_to_width(headers, [["a", "b", "c"]], "Labels", 80) == [["a", "b", "c"]]
    assert fit_to_width(headers, [["abc", "def", "ghijkl"]], "Labels", 10) == [
        ["a...", "d...", "ghijkl"]]


def test_ls_reads_the_width_on_stdin_else_80(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import io
    import os
    import sys

    from tsh.cli.ls import terminal_width

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no file descriptor
    assert terminal_width() == 80
    with open(os.devnull) as devnull:
        monkeypatch.setattr(sys, "stdin", devnull)
        assert terminal_width() == 80
        monkeypatch.setattr(os, "get_terminal_size", lambda fd: os.terminal_size((132, 40)))
        assert terminal_width() == 132
