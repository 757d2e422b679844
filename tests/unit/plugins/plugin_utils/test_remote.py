"""plugins/plugin_utils/remote.py: index credentials masked and sent only to their host, and a
module killed on the host told apart from the module's own failures."""

import base64

from ansible_collections.lockstep.cluster.plugins.plugin_utils import remote
from ansible_collections.lockstep.cluster.plugins.plugin_utils import remote as credentials


def test_credentials_are_masked_and_sent_only_to_their_host():
    url = "https://ci:p%40ss-word@index.example:8443/simple"
    secrets = credentials.secrets_of([url, "https://TOKEN123@other.example/simple", None])
    assert "p%40ss-word" in secrets and "p@ss-word" in secrets and "TOKEN123" in secrets
    text = credentials.redact({"msg": ["failed: %s and p@ss-word" % url]}, secrets)
    assert "ss-word" not in str(text) and credentials.MASK in text["msg"][0]
    assert credentials.strip_userinfo(url) == "https://index.example:8443/simple"
    header = credentials.auth_header("https://index.example:8443/files/a.whl", [url])
    assert base64.b64decode(header.split()[1]) == b"ci:p@ss-word"
    assert credentials.auth_header("https://elsewhere.example/files/a.whl", [url]) is None
    assert credentials.auth_header("https://index.example/files/a.whl", [url]) is None  # other port
    assert credentials.uv_index_env(url, ["https://x.example/simple"]) == {
        "UV_DEFAULT_INDEX": url, "UV_INDEX": "https://x.example/simple"}


def test_other_failures_are_left_as_the_module_said():
    own = {"failed": True, "kind": "hash", "rc": 1, "msg": "a downloaded file does not match"}
    assert remote.killed(own, "m", "did", "after") is own
    plain = {"failed": True, "rc": 2, "msg": "MODULE FAILURE"}
    assert remote.killed(plain, "m", "did", "after") is plain
