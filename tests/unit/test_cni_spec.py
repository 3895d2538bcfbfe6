"""cni/spec.py: each bad invocation gets the spec's code and names the culprit; good ones parse whole."""

from __future__ import annotations

import json

import pytest

from cni import request as codes
from cni.request import CniError
from cni.spec import error_version, format_error, format_result, format_version, parse_cni_args, parse_invocation

CONF = {"cniVersion": "1.0.0", "name": "lenet", "type": "leengine-cni", "bridge": "br-pods", "pools": ["web-a"],
        "mtu": 1450, "gratuitousArp": True, "agentSocket": "/run/leengine/cni.sock"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee01", "CNI_NETNS": "/var/run/netns/pod1",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def parse(env: dict | None = None, conf: dict | str | None = None, **env_changes: str | None):
    env = dict(ENV if env is None else env)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    stdin = conf if isinstance(conf, str) else json.dumps(CONF if conf is None else conf)
    return parse_invocation(env, stdin)


def error_of(*args, **kwargs) -> CniError:
    with pytest.raises(CniError) as info:
        parse(*args, **kwargs)
    return info.value


def conf_with(**changes) -> dict:
    conf = dict(CONF)
    for key, value in changes.items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    return conf


# --- a good invocation -------------------------------------------------------------------------------------------


def test_add_parses_every_field():
    req = parse(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")
    assert req.command == "ADD" and req.cni_version == "1.0.0"
    assert (req.container_id, req.netns, req.ifname, req.path) == ("c0ffee01", "/var/run/netns/pod1", "eth0",
                                                                    "/opt/cni/bin")
    assert req.args == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-0"}
    assert req.network == CONF and req.network_name == "lenet"
    assert req.prev_result is None and req.valid_attachments == ()


def test_unknown_extra_fields_are_allowed():
    conf = conf_with(runtimeConfig={"portMappings": []}, capabilities={"mac": True}, args={"cni": {}},
                     ipam={"type": "whatever"}, somethingElse=[1, 2])
    assert parse(conf=conf).network["somethingElse"] == [1, 2]


def test_only_name_and_type_are_required():
    assert parse(conf={"cniVersion": "1.1.0", "name": "n", "type": "leengine-cni"}).cni_version == "1.1.0"


def test_prev_result_is_kept_as_given():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/pod1"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}]}
    req = parse(conf=conf_with(prevResult=prev))
    assert req.prev_result == prev


def test_prev_result_must_be_an_object():
    err = error_of(conf=conf_with(prevResult=["x"]))
    assert err.code == codes.INVALID_CONFIG and "prevResult" in err.msg


def test_del_needs_no_netns():
    req = parse(CNI_COMMAND="DEL", CNI_NETNS=None)
    assert req.command == "DEL" and req.netns == ""


def test_cni_path_is_never_required():
    assert parse(CNI_PATH=None).path == ""


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_no_attachment_variables(command):
    conf = conf_with(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    req = parse(env={"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}, conf=conf)
    assert req.command == command and (req.container_id, req.netns, req.ifname) == ("", "", "")


def test_gc_ignores_attachment_variables_even_if_given():
    conf = conf_with(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    req = parse(CNI_COMMAND="GC", CNI_IFNAME="not valid because far too long", conf=conf)
    assert req.ifname == "" and req.container_id == ""


# --- environment: code 4, naming the variable ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_missing_command(value):
    err = error_of(CNI_COMMAND=value)
    assert err.code == codes.INVALID_ENV and "CNI_COMMAND" in err.msg


def test_unknown_command():
    err = error_of(CNI_COMMAND="INIT")
    assert err.code == codes.INVALID_ENV and "CNI_COMMAND" in err.msg and "INIT" in err.msg


def test_version_is_not_an_agent_request():
    assert error_of(CNI_COMMAND="VERSION").code == codes.INVALID_ENV


@pytest.mark.parametrize(("command", "variable"), [
    ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"),
    ("CHECK", "CNI_CONTAINERID"), ("CHECK", "CNI_NETNS"), ("CHECK", "CNI_IFNAME"),
    ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"),
])
def test_each_missing_variable_is_named(command, variable):
    conf = conf_with(prevResult={"cniVersion": "1.0.0"}) if command == "CHECK" else None
    err = error_of(CNI_COMMAND=command, conf=conf, **{variable: None})
    assert err.code == codes.INVALID_ENV
    assert variable in err.msg and err.details == variable


def test_all_missing_variables_are_named_at_once():
    err = error_of(env={"CNI_COMMAND": "ADD"})
    assert err.code == codes.INVALID_ENV
    assert err.details.split(",") == ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"]


def test_environment_is_checked_before_stdin():
    # libcni's skel order: a broken env and a broken stdin report the env (4), not the decode (6).
    assert error_of(CNI_CONTAINERID=None, conf="{not json").code == codes.INVALID_ENV


@pytest.mark.parametrize("container_id", ["-leading-dash", "_x", ".x", "has space", "a/b", "a:b", "ünïcode", "a\n"])
def test_bad_container_id(container_id):
    err = error_of(CNI_CONTAINERID=container_id)
    assert err.code == codes.INVALID_ENV and "CNI_CONTAINERID" in err.msg


@pytest.mark.parametrize("container_id", ["a", "0", "abc_DEF.1-2", "f" * 64])
def test_good_container_id(container_id):
    assert parse(CNI_CONTAINERID=container_id).container_id == container_id


@pytest.mark.parametrize("ifname", ["a" * 16, ".", "..", "eth/0", "eth:0", "eth 0", "eth\t0", "net\u20001"])
def test_bad_ifname(ifname):
    err = error_of(CNI_IFNAME=ifname)
    assert err.code == codes.INVALID_ENV and "CNI_IFNAME" in err.msg


@pytest.mark.parametrize("ifname", ["eth0", "a" * 15, "net1.100", "if-x_y", "..."])
def test_good_ifname(ifname):
    assert parse(CNI_IFNAME=ifname).ifname == ifname


def test_relative_netns_is_refused():
    err = error_of(CNI_NETNS="run/netns/pod1")
    assert err.code == codes.INVALID_ENV and "CNI_NETNS" in err.msg


# --- CNI_ARGS ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "parsed"), [
    ("", {}),
    ("A=1", {"A": "1"}),
    ("A=1;B=", {"A": "1", "B": ""}),
    ("A=1;", {"A": "1"}),
    ("TOKEN=a=b", {"TOKEN": "a=b"}),
])
def test_cni_args_good(raw, parsed):
    assert parse_cni_args(raw) == parsed
    assert parse(CNI_ARGS=raw).args == parsed


@pytest.mark.parametrize("raw", ["novalue", "A=1;broken", "=1", "A B=1", "A=1;A=2", "K8S POD=x"])
def test_cni_args_bad(raw):
    err = error_of(CNI_ARGS=raw)
    assert err.code == codes.INVALID_ENV and "CNI_ARGS" in err.msg + err.details


# --- stdin decoding (6) and version (1) ------------------------------------------------------------------------------


@pytest.mark.parametrize("stdin", ["", "{", "not json", '{"cniVersion": "1.0.0",}', "[1, 2]", '"a string"', "null"])
def test_malformed_config_is_a_decode_failure(stdin):
    assert error_of(conf=stdin).code == codes.DECODE_FAILURE


def test_non_string_version_is_a_decode_failure():
    err = error_of(conf=conf_with(cniVersion=1.0))
    assert err.code == codes.DECODE_FAILURE and "cniVersion" in err.msg


def test_missing_version_means_0_1_0_which_is_incompatible():
    err = error_of(conf=conf_with(cniVersion=None))
    assert err.code == codes.INCOMPATIBLE_VERSION and "0.1.0" in err.details
    assert "1.0.0" in err.details and "1.1.0" in err.details


@pytest.mark.parametrize("version", ["0.4.0", "0.3.1", "1.2.0", "2.0.0", "1.0", "latest", ""])
def test_unknown_version_is_incompatible(version):
    assert error_of(conf=conf_with(cniVersion=version)).code == codes.INCOMPATIBLE_VERSION


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_1_1_0(command):
    conf = conf_with(**{"cni.dev/valid-attachments": []})  # cniVersion stays 1.0.0
    err = error_of(env={"CNI_COMMAND": command}, conf=conf)
    assert err.code == codes.INCOMPATIBLE_VERSION and command in err.msg


def test_version_is_checked_before_config_fields():
    assert error_of(conf=conf_with(cniVersion="0.4.0", mtu="big")).code == codes.INCOMPATIBLE_VERSION


# --- network configuration fields: 7, naming the field ---------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("name", None), ("name", ""), ("name", 7), ("name", "-net"), ("name", "my net"), ("name", "a/b"),
    ("type", None), ("type", ""), ("type", ["leengine-cni"]), ("type", "../bin/x"), ("type", "a\\b"),
    ("agentSocket", "relative/cni.sock"), ("agentSocket", 5), ("agentSocket", "/" + "s" * 107),
    ("agentTimeout", 0), ("agentTimeout", -1), ("agentTimeout", "30"), ("agentTimeout", True), ("agentTimeout", 301),
    ("bridge", ""), ("bridge", "b" * 16), ("bridge", "br pods"), ("bridge", "br/0"), ("bridge", 1), ("bridge", ".."),
    ("pools", "web-a"), ("pools", []), ("pools", ["Web"]), ("pools", ["-a"]), ("pools", ["a" * 64]), ("pools", [1]),
    ("pools", ["a", "a"]), ("pools", ["a_b"]),
    ("mtu", 67), ("mtu", 65536), ("mtu", "1500"), ("mtu", 1500.0), ("mtu", True),
    ("gratuitousArp", "yes"), ("gratuitousArp", 1), ("gratuitousArp", None),
])
def test_bad_config_field(field, value):
    conf = dict(CONF)
    if value is None and field in ("name", "type"):
        conf.pop(field)
    else:
        conf[field] = value
    err = error_of(conf=conf)
    assert err.code == codes.INVALID_CONFIG
    assert field in err.msg and err.details.startswith(f"{field}=")


@pytest.mark.parametrize(("field", "value"), [
    ("mtu", 68), ("mtu", 65535), ("bridge", "b" * 15), ("bridge", "br-int.1_x"), ("pools", ["a", "b-2", "z" * 63]),
    ("agentTimeout", 0.5), ("agentTimeout", 300), ("gratuitousArp", False), ("name", "a.b_c-1"),
])
def test_good_config_field(field, value):
    assert parse(conf=conf_with(**{field: value})).network[field] == value


# --- GC --------------------------------------------------------------------------------------------------------------


def gc(conf_changes: dict):
    return parse(env={"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"},
                 conf=conf_with(cniVersion="1.1.0", **conf_changes))


def test_gc_valid_attachments_become_tuples_in_order():
    keep = [{"containerID": "b2", "ifname": "eth0"}, {"containerID": "a1", "ifname": "net1"}]
    assert gc({"cni.dev/valid-attachments": keep}).valid_attachments == (("b2", "eth0"), ("a1", "net1"))


def test_gc_accepts_libcni_1_2s_second_key_and_prefers_the_specs():
    assert gc({"cni.dev/attachments": [{"containerID": "x", "ifname": "eth0"}]}).valid_attachments == (("x", "eth0"),)
    both = {"cni.dev/valid-attachments": [{"containerID": "spec", "ifname": "eth0"}],
            "cni.dev/attachments": [{"containerID": "other", "ifname": "eth0"}]}
    assert gc(both).valid_attachments == (("spec", "eth0"),)


def test_gc_empty_list_means_nothing_is_valid():
    assert gc({"cni.dev/valid-attachments": []}).valid_attachments == ()


def test_gc_without_a_list_is_refused_not_read_as_empty():
    with pytest.raises(CniError) as info:
        gc({})
    assert info.value.code == codes.INVALID_CONFIG and "valid-attachments" in info.value.msg


@pytest.mark.parametrize("entries", [
    {"containerID": "a", "ifname": "eth0"}, ["a"], [{"containerID": "a"}], [{"ifname": "eth0"}],
    [{"containerID": "", "ifname": "eth0"}], [{"containerID": "a", "ifname": 0}],
])
def test_gc_bad_valid_attachments(entries):
    with pytest.raises(CniError) as info:
        gc({"cni.dev/valid-attachments": entries})
    assert info.value.code == codes.INVALID_CONFIG and "cni.dev/valid-attachments" in info.value.msg


# --- output ----------------------------------------------------------------------------------------------------------

RESULT = {
    "interfaces": [{"name": "veth1", "mac": "aa:bb:cc:00:00:01", "mtu": 1450},
                   {"name": "eth0", "mac": "aa:bb:cc:00:00:02", "sandbox": "/var/run/netns/pod1", "mtu": 1450}],
    "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1450, "table": 100, "scope": 0}],
    "dns": {"nameservers": ["10.1.0.2"]},
}


def test_format_result_1_1_keeps_new_fields_and_puts_version_first():
    text = format_result({**RESULT, "cniVersion": "junk"}, "1.1.0")
    assert text.startswith('{"cniVersion":"1.1.0",')
    assert json.loads(text) == {"cniVersion": "1.1.0", **RESULT}


def test_format_result_1_0_drops_1_1_only_fields():
    out = json.loads(format_result(RESULT, "1.0.0"))
    assert out["cniVersion"] == "1.0.0"
    assert all("mtu" not in i for i in out["interfaces"])
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert out["ips"] == RESULT["ips"] and out["dns"] == RESULT["dns"]
    assert RESULT["interfaces"][0]["mtu"] == 1450  # the caller's dict is untouched


def test_format_error_is_the_specs_object():
    err = CniError(codes.POOL_EXHAUSTED, "no free address", "pools web-a, web-b are full")
    assert json.loads(format_error(err, "1.0.0")) == {"cniVersion": "1.0.0", "code": 100, "msg": "no free address",
                                                      "details": "pools web-a, web-b are full"}
    assert "details" not in json.loads(format_error(CniError(11, "later"), "1.1.0"))


def test_format_version_echoes_the_request():
    assert json.loads(format_version("1.0.0")) == {"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}


@pytest.mark.parametrize(("stdin", "version"), [
    ('{"cniVersion": "1.0.0"}', "1.0.0"), ('{"cniVersion": "0.4.0"}', "0.4.0"), ("{}", "1.1.0"),
    ("garbage", "1.1.0"), ('{"cniVersion": 3}', "1.1.0"), ("[]", "1.1.0"),
])
def test_error_version_echoes_the_configuration(stdin, version):
    assert error_version(stdin) == version
