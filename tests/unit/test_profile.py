"""tsh._core.profile and tsh._store.store: profile data, layout, and loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tsh import Profile, ProfileError, ProfileStore, UsageError
from tsh._core.addr import split_host_port
from tsh._store.fs import atomic_write


def make_profile(**kw) -> Profile:
    base = dict(
        web_proxy_addr="proxy.example.com:3080",
        ssh_proxy_addr="proxy.example.com:3023",
        user="joe",
        cluster="example.com",
        root_cluster="example.com",
        clusters=("example.com", "leaf.example.com"),
        principals=("root", "joe", "-teleport-internal-join"),
        valid_before=2_000_000_000,
    )
    base.update(kw)
    return Profile(**base)


@pytest.mark.parametrize(
    "addr, host, port",
    [
        ("proxy.example.com", "proxy.example.com", 3080),
        ("proxy.example.com:443", "proxy.example.com", 443),
        ("127.0.0.1:1", "127.0.0.1", 1),
        ("[::1]:3080", "::1", 3080),
        ("[::1]", "::1", 3080),
        ("::1", "::1", 3080),
    ],
)
def test_split_host_port(addr, host, port):
    assert split_host_port(addr, 3080) == (host, port)


@pytest.mark.parametrize("addr", ["", ":443", "host:0", "host:65536", "host:x", "[::1]x"])
def test_split_host_port_rejects(addr):
    with pytest.raises(ValueError):
        split_host_port(addr, 3080)


def test_profile_round_trip_and_is_valid_yaml():
    profile = make_profile()
    text = profile.to_json()
    assert Profile.from_json(text) == profile
    # The file is named .yaml like real tsh's: it must parse as YAML to the same mapping.
    assert yaml.safe_load(text) == json.loads(text)
    assert yaml.safe_load(text)["web_proxy_addr"] == "proxy.example.com:3080"


def test_profile_keeps_unknown_keys():
    data = json.loads(make_profile().to_json())
    data["future_field"] = {"x": 1}
    profile = Profile.from_json(json.dumps(data))
    assert json.loads(profile.to_json())["future_field"] == {"x": 1}
    # Unknown keys play no part in equality; only a Profile equals a Profile.
    assert profile == make_profile() and hash(profile) == hash(make_profile())
    assert profile != profile._replace(user="someone-else")
    assert make_profile() != tuple(make_profile())


def test_logins_hide_internal_principals():
    profile = make_profile(principals=("root", "-teleport-internal-join", "-teleport-nologin-1"))
    assert profile.logins == ("root",)
    assert profile.name == profile.proxy_host == "proxy.example.com"


@pytest.mark.parametrize("text", ["", "[1]", "{", '{"user": "x"}'])
def test_corrupt_profile_is_a_profile_error(text):
    with pytest.raises(ProfileError):
        Profile.from_json(text)


@pytest.mark.parametrize(
    "field, value",
    [
        ("ssh_proxy_addr", "[fe80::1%n'$(touch${IFS}x)']:3023"),
        ("ssh_proxy_addr", "[fe80::1%n\nMatch exec x]:3023"),
        ("web_proxy_addr", "*:3080"),
        ("web_proxy_addr", "proxy.example.com"),  # no port
        ("user", "a/b"),
        ("cluster", "c\nHost *"),
        ("clusters", ["ok", "*"]),
        ("clusters", "ok"),
        ("principals", ["root\n> Profile URL: evil"]),
        ("roles", [1]),
        ("valid_before", "soon"),
        ("valid_before", True),
        ("key_storage", "cloud"),
        ("server_version", "17\n"),
    ],
)
def test_profile_fields_are_validated_where_read(field, value):
    data = json.loads(make_profile().to_json())
    data[field] = value
    with pytest.raises(ProfileError, match="is not valid|lacks"):
        Profile.from_json(json.dumps(data), source="/home/x/p.yaml")


def test_profile_values_come_back_typed():
    from tsh._core.names import ClusterName

    p = Profile.from_json(make_profile().to_json())
    assert all(type(c) is ClusterName for c in p.clusters)
    assert type(p.user).__name__ == "UserName"
    assert p == make_profile() and p.web_proxy_addr == "proxy.example.com:3080"


def test_store_lists_current_first_and_skips_garbage(tmp_path):
    store = ProfileStore(tmp_path)
    assert store.list() == [] and store.current() is None
    with store.transaction():
        for host in ("a.example.com", "b.example.com"):
            p = make_profile(web_proxy_addr=f"{host}:443")
            atomic_write(store.paths(host, "joe").profile_file, p.to_json())
        atomic_write(tmp_path / "garbage.yaml", "not json")
        atomic_write(tmp_path / "current-profile", "b.example.com\n")
    assert [p.name for p in store.list()] == ["b.example.com", "a.example.com"]
    assert store.current().name == "b.example.com"
    with pytest.raises(ProfileError, match="no profile"):
        store.load("c.example.com")


def test_paths_follow_real_tsh_layout(tmp_path):
    paths = ProfileStore(tmp_path).paths("proxy.example.com", "joe")
    keys = tmp_path / "keys" / "proxy.example.com"
    assert paths.private_key == keys / "joe"
    assert paths.public_key == keys / "joe.pub"
    assert paths.ssh_cert("leaf") == keys / "joe-ssh" / "leaf-cert.pub"
    assert paths.tls_ca("root") == keys / "cas" / "root.pem"
    assert paths.known_hosts == tmp_path / "known_hosts"
    assert paths.profile_file == tmp_path / "proxy.example.com.yaml"


def test_str_paths_name_the_same_files_as_paths(tmp_path):
    # `tsh proxy ssh` uses the str face (no pathlib import on every connection).
    store = ProfileStore(tmp_path)
    as_path = store.paths("proxy.example.com", "joe")
    as_str = store.paths("proxy.example.com", "joe", as_str=True)
    for name in ("profile_file", "current_profile", "known_hosts", "keys_dir", "private_key", "public_key",
                 "tls_key", "tls_cert", "tls_cert_legacy", "ssh_cert_dir", "cas_dir", "certs_pem"):
        assert isinstance(getattr(as_path, name), Path)
        assert getattr(as_str, name) == str(getattr(as_path, name)), name
    assert as_str.ssh_cert("leaf") == str(as_path.ssh_cert("leaf"))
    assert as_str.tls_ca("leaf") == str(as_path.tls_ca("leaf"))


def test_default_home_uses_teleport_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TELEPORT_HOME", str(tmp_path / "th"))
    assert ProfileStore().home == tmp_path / "th"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TELEPORT_HOME", "rel")
    assert ProfileStore().home == tmp_path / "rel"


@pytest.mark.parametrize(
    "xdg, home",
    [(None, "/home/joe"), ("", "/home/joe"), ("/data/x", "/home/joe"), ("relative", "/home/joe"),
     (None, "relative-home"), ("  ", "/home/joe")],
)  # fmt: skip
def test_default_home_is_platformdirs_answer(monkeypatch, xdg, home):
    import platformdirs

    from tsh._store.store import default_home

    monkeypatch.delenv("TELEPORT_HOME", raising=False)
    monkeypatch.setenv("HOME", home)
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    try:
        expected = platformdirs.user_data_dir("tsh-py", appauthor=False)
    except RuntimeError:  # platformdirs cannot tell either (relative HOME)
        return
    assert default_home() == expected


@pytest.mark.parametrize("proxy", ["../outside", "a b", "*"])
def test_select_refuses_a_proxy_that_is_not_a_host_name(tmp_path, proxy):
    from tsh import InvalidNameError

    (tmp_path / "home").mkdir()
    (tmp_path / "outside.yaml").write_text(make_profile().to_json())
    with pytest.raises(InvalidNameError):
        ProfileStore(tmp_path / "home").select(proxy)


def test_select_reads_proxy_as_login_writes_it(tmp_path):
    # `tsh login --proxy=https://h:3080/` saves the profile under "h"; every
    # command that takes --proxy finds it with the same spelling.
    home = tmp_path / "home"
    home.mkdir()
    profile = make_profile()
    (home / f"{profile.name}.yaml").write_text(profile.to_json())
    for spelling in (profile.name, f"{profile.name}:3080", f"https://{profile.name}:3080/"):
        assert ProfileStore(home).select(spelling) == profile
    with pytest.raises(UsageError):
        ProfileStore(home).select(f"http://{profile.name}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shortcut is Linux's")
def test_default_home_on_linux_needs_no_platformdirs(tmp_path):
    # `tsh proxy ssh` finds the profile on every connection (see _linux_data_home).
    env = {k: v for k, v in os.environ.items() if k not in ("TELEPORT_HOME", "XDG_DATA_HOME")}
    code = (
        "import sys; from tsh._store.store import default_home; default_home(); "
        "assert 'platformdirs' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**env, "HOME": str(tmp_path)})


@pytest.mark.parametrize(
    "field, value",
    [
        ("valid_before", "2030-01-01"),
        ("valid_before", True),
        ("valid_before", 10**30),  # datetime cannot show it
        ("valid_after", -1),
        ("principals", "root"),
        ("principals", [1]),
        ("roles", {"access": True}),
        ("clusters", [["example.com"]]),
        ("clusters", ["../x"]),
        ("user", 5),
        ("user", "../../etc"),
        ("cluster", "a/b"),
        ("root_cluster", None),
        ("cluster", ""),
        ("web_proxy_addr", "proxy.example.com:99999"),
        ("ssh_proxy_addr", ["proxy.example.com:3023"]),
        ("key_storage", "tape"),
        ("server_version", 17),
    ],
)
def test_profile_with_a_wrong_field_says_which_file_and_how_to_fix(field, value):
    data = json.loads(make_profile().to_json())
    data[field] = value
    with pytest.raises(ProfileError) as e:
        Profile.from_json(json.dumps(data), source="/h/p.yaml")
    assert str(e.value).startswith("cannot read the profile /h/p.yaml: ")
    assert field in str(e.value) and str(e.value).endswith("; run tsh logout, or delete /h/p.yaml")


@pytest.mark.parametrize(
    "text",
    [
        "web_proxy_addr: proxy.example.com:443\nuser: joe\n",  # real tsh's YAML profile
        "[" * 100_000 + "]" * 100_000,  # json.loads: RecursionError
    ],
)
def test_foreign_profile_says_which_file_and_how_to_fix(text):
    with pytest.raises(ProfileError, match=r"^cannot read the profile /h/p.yaml: .*delete /h/p.yaml$"):
        Profile.from_json(text, source="/h/p.yaml")


def test_profile_of_another_proxy_under_this_name_is_refused(tmp_path):
    store = ProfileStore(tmp_path)
    path = tmp_path / "a.example.com.yaml"
    atomic_write(path, make_profile(web_proxy_addr="b.example.com:443").to_json())
    atomic_write(tmp_path / "current-profile", "a.example.com\n")
    for read in (lambda: store.load("a.example.com"), store.current, lambda: store.select("a.example.com")):
        with pytest.raises(ProfileError, match=f"{path} is for b.example.com, not a.example.com"):
            read()
    problems: list[ProfileError] = []
    assert store.list(problems) == [] and len(problems) == 1
