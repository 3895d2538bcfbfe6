"""The token table (control/auth.py) and the tokens file the control server reads."""

from __future__ import annotations

import pytest

from control.auth import Principal, TokenTable, TokenTableError
from leengine.control_server import TokensFileError, check_listen, domain_to_dict, load_tokens

GOOD = """\
# token                            name       role
0123456789abcdef0123456789abcdef   ops        admin
fedcba9876543210fedcba9876543210   discovery  discovery   # the discovery service
c0ffee00c0ffee00c0ffee00c0ffee00   alice      user
c0ffee00c0ffee00c0ffee00c0ffee01   alice      user
"""


def test_the_table_maps_tokens_to_principals():
    table = TokenTable.parse(GOOD)
    assert len(table) == 4
    assert table.lookup("0123456789abcdef0123456789abcdef") == Principal("ops", "admin")
    assert table.lookup("c0ffee00c0ffee00c0ffee00c0ffee01") == Principal("alice", "user")  # two tokens: rotation
    assert table.lookup("0123456789abcdef0123456789abcdeX") is None
    assert table.lookup("") is None
    assert "0123456789abcdef" not in repr(table)  # only digests are kept


@pytest.mark.parametrize(("text", "message"), [
    ("", "no tokens"),
    ("0123456789abcdef0123456789abcdef ops\n", "tokens:1: expected 'token name role'"),
    ("short ops admin\n", "tokens:1: a token must be"),
    ("0123456789abcdef0123456789abcdef Ops admin\n", "'Ops' is not a principal name"),
    ("0123456789abcdef0123456789abcdef ops root\n", "role 'root' is not one of admin, discovery, user"),
    ("# c\n0123456789abcdef0123456789abcdef ops admin\n0123456789abcdef0123456789abcdef bob user\n",
     "tokens:3: this token is already given to ops"),
    ("0123456789abcdef0123456789abcdef ops admin\n1123456789abcdef0123456789abcdef ops user\n",
     "tokens:2: ops already has role admin"),
])
def test_bad_tables_name_the_line(text, message):
    with pytest.raises(TokenTableError, match=message.replace("(", r"\(")):
        TokenTable.parse(text)


def test_the_tokens_file_must_not_be_readable_by_others(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(GOOD)
    path.chmod(0o644)
    with pytest.raises(TokensFileError, match=r"accessible by every user \(mode 0644\).*chmod 600"):
        load_tokens(path)
    path.chmod(0o602)
    with pytest.raises(TokensFileError, match="mode 0602"):
        load_tokens(path)
    path.chmod(0o640)
    assert len(load_tokens(path)) == 4
    path.write_text("two fields\n")
    with pytest.raises(TokensFileError, match=f"{path}:1: expected"):
        load_tokens(path)
    with pytest.raises(TokensFileError, match="No such file"):
        load_tokens(tmp_path / "missing")
    with pytest.raises(TokensFileError, match="not a regular file"):
        load_tokens(tmp_path)


def test_listen_addresses_are_checked():
    assert check_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert check_listen("[::1]:50051") == ("::1", 50051)
    for bad in ("127.0.0.1", ":80", "host:port", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="host:port"):
            check_listen(bad)


def test_proto3_zero_values_mean_the_record_defaults():
    from control.generated.leengine.control.v1 import slb_pb2

    msg = slb_pb2.Domain(name="a.example.com", group="web", locations=[slb_pb2.Location()])
    assert domain_to_dict(msg) == {"name": "a.example.com", "group": "web", "owner": "", "settings": {},
                                   "upstreams": [], "locations": [{"path": "/", "set_headers": {}}]}
    assert "locations" not in domain_to_dict(slb_pb2.Domain(name="a.example.com", group="web"))
