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


def test_the_tokens_file_must_not_be_open_to_group_or_others(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(GOOD)
    for mode in (0o644, 0o602, 0o640, 0o660, 0o620, 0o610, 0o700):
        path.chmod(mode)
        if mode == 0o700:  # the owner's own bits are the owner's business
            assert len(load_tokens(path)) == 4
            continue
        with pytest.raises(TokensFileError, match=rf"open to its group or others \(mode {mode:04o}\).*chmod 600"):
            load_tokens(path)
    path.chmod(0o600)
    assert len(load_tokens(path)) == 4
    path.chmod(0o400)
    assert len(load_tokens(path)) == 4
    path.chmod(0o600)
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


def test_the_tokens_file_must_belong_to_the_server_user_or_root(tmp_path, monkeypatch):
    import os

    import leengine.control_server as server

    path = tmp_path / "tokens"
    path.write_text(GOOD)
    path.chmod(0o600)
    if os.geteuid() == 0:  # as root: give the file to someone else
        os.chown(path, 4242, -1)
        owner, me = 4242, 0
    else:  # as a user: pretend to be another one
        owner, me = path.stat().st_uid, path.stat().st_uid + 4242
        monkeypatch.setattr(server.os, "geteuid", lambda: me)
    with pytest.raises(TokensFileError, match=rf"belongs to uid {owner}, neither the user running the server "
                                              rf"\(uid {me}\) nor root"):
        load_tokens(path)
    monkeypatch.setattr(server.os, "geteuid", lambda: owner)  # the owner runs the server
    assert len(load_tokens(path)) == 4


def test_tokens_file_errors_are_one_bounded_line_naming_file_and_line(tmp_path):
    path = tmp_path / "tokens"
    path.write_bytes(b"0123456789abcdef0123456789abcdef ops admin\n" + b"0123456789abcdef0123456789abcdeX "
                     + b"N" * 100_000 + b" user\n")
    path.chmod(0o600)
    with pytest.raises(TokensFileError) as caught:
        load_tokens(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ") and "\n" not in message and len(message) < 300
    assert "(100000 characters)" in message
    # A form feed or U+2028 inside a line does not shift the line numbers.
    path.write_text("# a comment \u2028 with a separator\n\x0c\n0123456789abcdef0123456789abcdef ops root\n")
    with pytest.raises(TokensFileError, match=f"{path}:3: role 'root'"):
        load_tokens(path)
    path.write_bytes(b"0123456789abcdef0123456789abcdef ops admin\n\xff\n")
    with pytest.raises(TokensFileError, match=f"{path}:2: not UTF-8"):
        load_tokens(path)
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(TokensFileError, match="larger than"):
        load_tokens(path)
    short = "0123456789abcde"  # 15 characters
    with pytest.raises(TokenTableError, match="tokens:1: a token must be 16-512 characters of"):
        TokenTable.parse(f"{short} ops admin\n")
    with pytest.raises(TokenTableError, match="tokens:1: a token must be"):
        TokenTable.parse("0123456789abcdef0123456789abcde\u00e9 ops admin\n")


def test_failed_authentications_are_logged_at_most_a_burst_a_minute(monkeypatch, caplog):
    import logging

    import leengine.control_server as server

    now = [1000.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: now[0])
    limited = server.RateLimitedLog(logging.getLogger("test.auth"), 3, 60.0, "failed authentications")
    with caplog.at_level(logging.WARNING, logger="test.auth"):
        logged = [limited.warning("bad token from %s", f"peer{i}") for i in range(10)]
        assert logged == [True] * 3 + [False] * 7
        now[0] += 61
        assert limited.warning("bad token from %s", "late")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad token from peer0", "bad token from peer1", "bad token from peer2",
                     "7 more failed authentications in the last 61 s were not logged", "bad token from late"]


def test_server_limits_are_checked():
    from leengine.control_server import ServerLimits

    limits = ServerLimits()
    assert (limits.max_receive_bytes, limits.max_send_bytes, limits.max_concurrent_rpcs) == (4 << 20, 8 << 20, 256)
    assert limits.page_bytes == 1 << 20 and ServerLimits(max_send_bytes=2 << 20).page_bytes == 512 << 10
    for bad in ({"max_receive_bytes": 10}, {"max_send_bytes": 1 << 20}, {"max_concurrent_rpcs": 0},
                {"max_concurrent_rpcs": True}):
        with pytest.raises(ValueError, match="--max-"):
            ServerLimits(**bad)
