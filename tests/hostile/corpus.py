"""The project's bad-input corpus (issue 9): hostile webhook bodies, control lines, config files and upstream
API answers, each with the documented answer. Tables only; the tests that run them are beside this file.

Each webhook and control case is run against ONE daemon subprocess (tests/hostile/test_corpus_daemon.py);
config cases through ``parse_config``/``load_config`` (tests/hostile/test_corpus_config.py); upstream answers
through each connector's client over a mock transport (tests/hostile/test_corpus_upstream.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# secrets the corpus daemon and clients are configured with: no output may carry any of them, in any form
WEBHOOK_SECRET = "whsec-corpus-3b9f1e7a5c"
EFFICY_KEY = "efficy-corpus-key-8d2c4a6e"
APSIS_SECRET = "apsis-corpus-secret-1f3e5d7c"
EA_KEY = "ea-corpus-key-6a4c2e0b9d"
MC_PASSWORD = "mc-corpus-pass-7e5c3a1f"
SECRETS = (WEBHOOK_SECRET, EFFICY_KEY, APSIS_SECRET, EA_KEY, MC_PASSWORD)


@dataclass(frozen=True)
class Case:
    id: str
    data: Any  # bytes for bodies and lines, str or bytes for config files, see each table
    expect: Any  # HTTP status, control error code, config key path prefix, or exception class name


def _contract(key: Any, op: Any = "updated", raw: bool = False) -> bytes:
    item = f'{{"record_id": {key}, "operation": {json.dumps(op)}}}' if raw else json.dumps(
        {"record_id": key, "operation": op})
    return f"[{item}]".encode()


def _native(key: Any, table: Any = 11000, op: Any = "Update", raw: bool = False) -> bytes:
    rec = (f'{{"table": {json.dumps(table)}, "key": {key}, "operation": {json.dumps(op)}}}' if raw else
           json.dumps({"table": table, "key": key, "operation": op}))
    return f'{{"database": "d", "version": 1, "records": [{rec}]}}'.encode()


BAD_KEYS: list[tuple[str, Any]] = [
    ("list", [1]), ("object", {"a": 1}), ("float", 1.5), ("negative", -7), ("zero", 0), ("true", True),
    ("false", False), ("neg-string", "-7"), ("float-string", "1.5"), ("path", "../../etc/passwd"),
    ("sql", "1; DROP TABLE links"), ("nul", "12\x0034"), ("lone-surrogate", "\ud800"), ("rtl", "\u202e123"),
    ("superscript", "\u00b2"), ("arabic-digits", "\u0661\u0662"), ("5000-digits", "1" * 5000),
    ("19-digits", "1" * 19), ("empty", ""), ("space", " "), ("padded", " 42 "), ("hex", "0x1F"),
    ("exp-string", "1e3"), ("inf-string", "inf"), ("nan-string", "NaN"), ("plus", "+5"), ("newline", "4\n2"),
    ("fullwidth", "\uff14\uff12"), ("huge-int", 10 ** 30), ("tiny-float", 1e-300), ("html", "<script>1</script>"),
]
BAD_KEY_LITERALS = [("1e999", "1e999"), ("nan-literal", "NaN"), ("neg-inf", "-Infinity"), ("inf", "Infinity"),
                    ("5000-digit-int", "1" * 5000), ("neg-zero", "-0"), ("big-exp", "1e30")]

DEEP = b"[" * 5000 + b"]" * 5000

WEBHOOK_CASES: list[Case] = [
    *(Case(f"contract-key-{name}", _contract(key), 400) for name, key in BAD_KEYS),
    *(Case(f"native-key-{name}", _native(key), 400) for name, key in BAD_KEYS),
    *(Case(f"contract-literal-{name}", _contract(lit, raw=True), 400) for name, lit in BAD_KEY_LITERALS),
    *(Case(f"native-literal-{name}", _native(lit, raw=True), 400) for name, lit in BAD_KEY_LITERALS),
    Case("native-key-object-k", _native({"k": 1}), 400),
    Case("deep-array", DEEP, 400),
    Case("deep-in-contract", b'[{"record_id": ' + DEEP + b', "operation": "updated"}]', 400),
    Case("deep-in-native", b'{"records": ' + DEEP + b"}", 400),
    Case("depth-40-objects", b'{"a":' * 40 + b"1" + b"}" * 40, 400),
    Case("empty-body", b"", 400),
    Case("not-json", b"this is not json", 400),
    Case("latin1", '[{"record_id": "caf\xe9"}]'.encode("latin-1"), 400),
    Case("utf16", '[{"record_id": 1, "operation": "updated"}]'.encode("utf-16"), 400),
    Case("bom-garbage", b"\xef\xbb\xbf\xff\xfe", 400),
    Case("json-string", b'"hello"', 400),
    Case("json-number", b"42", 400),
    Case("json-null", b"null", 400),
    Case("empty-array", b"[]", 400),
    Case("empty-object", b"{}", 400),
    Case("records-not-list", b'{"records": {"a": 1}}', 400),
    Case("records-empty", b'{"records": []}', 400),
    Case("record-not-object", b'{"records": [1, 2]}', 400),
    Case("item-not-object", b'["x"]', 400),
    Case("missing-record-id", b'[{"operation": "updated"}]', 400),
    Case("null-record-id", b'[{"record_id": null, "operation": "updated"}]', 400),
    Case("bad-operation", _contract(42, "explode"), 400),
    Case("operation-object", _contract(42, {"a": 1}), 400),
    Case("native-bad-operation", _native(42, op="Obliterate"), 400),
    Case("native-table-text", _native(42, table="contacts"), 400),
    Case("native-table-huge", _native(42, table="9" * 5000), 400),
    Case("native-no-key", b'{"records": [{"table": 11000, "operation": "Update"}]}', 400),
    Case("consent-not-bool", b'[{"record_id": 42, "consent_base_id": 1, "has_consented": "yes"}]', 400),
    Case("over-200-items", json.dumps([{"record_id": i, "operation": "updated"} for i in range(1, 202)]).encode(),
         400),
    Case("other-table-only", _native(42, table=10000), 400),
    Case("nan-elsewhere", b'[{"record_id": 42, "operation": "updated", "x": NaN}]', 400),
    Case("trailing-garbage", b'[{"record_id": 42, "operation": "updated"}] xyz', 400),
    Case("duplicate-keys-bad", b'[{"record_id": 42, "record_id": [1], "operation": "updated"}]', 400),
    Case("valid-then-bad", b'[{"record_id": 42, "operation": "updated"}, {"record_id": -1, "operation": "updated"}]',
         400),
]

# bodies sent without a valid signature: 401 whatever they hold (the signature is checked first)
UNSIGNED_CASES: list[Case] = [
    Case("unsigned-deep", DEEP, 401),
    Case("unsigned-valid", _contract(42), 401),
    Case("unsigned-secret-echo", WEBHOOK_SECRET.encode(), 401),
]

_HELLO = b'{"id": 1, "cmd": "hello"}'
CONTROL_CASES: list[Case] = [
    Case("deep-id", b'{"cmd":"hello","id":' + DEEP + b"}", "bad_json"),
    Case("deep-args", b'{"cmd":"status","id":1,"args":{"x":' + DEEP + b"}}", "bad_json"),
    Case("deep-objects", b'{"a":' * 3000 + b"1" + b"}" * 3000, "bad_json"),
    Case("depth-33", b'{"cmd":"hello","id":' + b"[" * 33 + b"]" * 33 + b"}", "bad_json"),
    Case("not-json", b"this is not json", "bad_json"),
    Case("half-object", b'{"id": 1, "cmd": ', "bad_json"),
    Case("nan-id", b'{"id": NaN, "cmd": "hello"}', "bad_json"),
    Case("infinity", b'{"id": Infinity, "cmd": "hello"}', "bad_json"),
    Case("1e999", b'{"id": 1e999, "cmd": "hello"}', "bad_json"),
    Case("5000-digit-id", b'{"id": ' + b"9" * 5000 + b', "cmd": "hello"}', "bad_json"),
    Case("latin1", b'{"id": 1, "cmd": "caf\xe9"}', "bad_json"),
    Case("invalid-utf8", b"\xff\xfe\xfd", "bad_json"),
    Case("nul-byte", b'{"id": 1,\x00 "cmd": "hello"}', "bad_json"),
    Case("single-quotes", b"{'id': 1, 'cmd': 'hello'}", "bad_json"),
    Case("trailing-comma", b'{"id": 1, "cmd": "hello",}', "bad_json"),
    Case("two-objects", _HELLO + _HELLO, "bad_json"),
    Case("array", b"[1, 2]", "bad_request"),
    Case("string", b'"hello"', "bad_request"),
    Case("number", b"42", "bad_request"),
    Case("null", b"null", "bad_request"),
    Case("true", b"true", "bad_request"),
    Case("no-cmd", b'{"id": 1}', "bad_request"),
    Case("cmd-number", b'{"id": 1, "cmd": 5}', "bad_request"),
    Case("cmd-list", b'{"id": 1, "cmd": ["hello"]}', "bad_request"),
    Case("cmd-null", b'{"id": 1, "cmd": null}', "bad_request"),
    Case("args-list", b'{"id": 1, "cmd": "status", "args": [1]}', "bad_request"),
    Case("args-string", b'{"id": 1, "cmd": "status", "args": "x"}', "bad_request"),
    Case("unknown-cmd", b'{"id": 1, "cmd": "frobnicate"}', "unknown_command"),
    Case("cmd-surrogate", b'{"id": 1, "cmd": "\\ud800"}', "unknown_command"),
    Case("cmd-rtl", b'{"id": 1, "cmd": "\\u202estatus"}', "unknown_command"),
    Case("cmd-nul", b'{"id": 1, "cmd": "hello\\u0000"}', "unknown_command"),
    Case("cmd-huge", b'{"id": 1, "cmd": "' + b"x" * 60000 + b'"}', "unknown_command"),
    Case("cmd-case", b'{"id": 1, "cmd": "HELLO"}', "unknown_command"),
    Case("cmd-secret", b'{"id": 1, "cmd": "' + WEBHOOK_SECRET.encode() + b'"}', "unknown_command"),
    Case("activate-no-name", b'{"id": 1, "cmd": "activate"}', "bad_request"),
    Case("activate-name-number", b'{"id": 1, "cmd": "activate", "args": {"integration": 5}}', "bad_request"),
    Case("activate-unknown", b'{"id": 1, "cmd": "activate", "args": {"integration": "nope"}}',
         "unknown_integration"),
    Case("activate-path", b'{"id": 1, "cmd": "activate", "args": {"integration": "../../etc"}}',
         "unknown_integration"),
    Case("status-unknown", b'{"id": 1, "cmd": "status", "args": {"integration": "\\u0000"}}',
         "unknown_integration"),
    Case("runs-unknown", b'{"id": 1, "cmd": "runs", "args": {"integration": "zz"}}', "unknown_integration"),
    Case("run-flow-unknown-flow", b'{"id": 1, "cmd": "run_flow", "args": {"integration": "efficy", '
         b'"flow": "nope"}}', "unknown_flow"),
    Case("full-sync-inactive", b'{"id": 1, "cmd": "full_sync", "args": {"integration": "efficy"}}', "not_active"),
    Case("cancel-inactive", b'{"id": 1, "cmd": "cancel", "args": {"integration": "efficy"}}', "not_active"),
    Case("report-run-text", b'{"id": 1, "cmd": "report", "args": {"integration": "efficy", "run_id": "x"}}',
         "bad_request"),
    Case("runs-limit-text", b'{"id": 1, "cmd": "runs", "args": {"integration": "efficy", "limit": "x"}}',
         "bad_request"),
]
OVERLONG_LINE = Case("line-over-64k", b"x" * (70 * 1024), "line_too_long")

# config files: (toml text, the key path the error must name; "" for a file-level error)
CONFIG_CASES: list[Case] = [
    Case("duration-overflow", '[daemon]\ncontrol_idle_timeout = "99999999999d"\n', "daemon.control_idle_timeout"),
    Case("duration-overflow-h", '[daemon]\nshutdown_timeout = "999999999999999h"\n', "daemon.shutdown_timeout"),
    Case("duration-bare-number", "[daemon]\nshutdown_timeout = 20\n", "daemon.shutdown_timeout"),
    Case("duration-garbage", '[daemon]\nshutdown_timeout = "soon"\n', "daemon.shutdown_timeout"),
    Case("duration-negative", '[daemon]\nshutdown_timeout = "-5s"\n', "daemon.shutdown_timeout"),
    Case("request-timeout-garbage", '[http]\nrequest_timeout = "x"\n', "http.request_timeout"),
    Case("max-connections-zero", "[http]\nmax_connections = 0\n", "http.max_connections"),
    Case("control-clients-negative", "[daemon]\ncontrol_max_clients = -1\n", "daemon.control_max_clients"),
    Case("deep-array", "[daemon]\nplugins = " + "[" * 5000 + "]" * 5000 + "\n", ""),
    Case("deep-inline-table", "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", ""),
    Case("mode-string-decimal-garbage", '[daemon]\ncontrol_socket_mode = "660x"\n', "daemon.control_socket_mode"),
    Case("mode-777", "[daemon]\ncontrol_socket_mode = 0o777\n", "daemon.control_socket_mode"),
    Case("mode-minus-one", "[daemon]\ncontrol_socket_mode = -1\n", "daemon.control_socket_mode"),
    Case("mode-decimal-660", "[daemon]\ncontrol_socket_mode = 660\n", "daemon.control_socket_mode"),
    Case("mode-string-777", '[daemon]\ncontrol_socket_mode = "0777"\n', "daemon.control_socket_mode"),
    Case("mode-setuid", "[daemon]\ncontrol_socket_mode = 0o4660\n", "daemon.control_socket_mode"),
    Case("mode-bool", "[daemon]\ncontrol_socket_mode = true\n", "daemon.control_socket_mode"),
    Case("mode-float", "[daemon]\ncontrol_socket_mode = 432.0\n", "daemon.control_socket_mode"),
    Case("timezone-unknown", '[daemon]\ntimezone = "Mars/Olympus"\n', "daemon.timezone"),
    Case("timezone-path", '[daemon]\ntimezone = "../../etc/passwd"\n', "daemon.timezone"),
    Case("timezone-nul", '[daemon]\ntimezone = "UTC\\u0000"\n', "daemon.timezone"),
    Case("listen-garbage", '[http]\nwebhook_listen = "everywhere"\n', "http.webhook_listen"),
    Case("listen-port-huge", '[http]\nwebhook_listen = "127.0.0.1:99999999999999999999"\n', "http.webhook_listen"),
    Case("max-body-tiny", "[http]\nmax_body_bytes = 1\n", "http.max_body_bytes"),
    Case("max-body-huge-int", "[http]\nmax_body_bytes = 99999999999999999999\n", "http.max_body_bytes"),
    Case("unknown-key", "[daemon]\nfrobnicate = 1\n", "daemon.frobnicate"),
    Case("unknown-section", "[frobnicate]\nx = 1\n", "frobnicate"),
    Case("integrations-not-table", "integrations = 5\n", "integrations"),
    Case("integration-bad-name", '[integrations."../x"]\nkind = "fake"\n', 'integrations.../x'),
    Case("integration-no-kind", "[integrations.a]\nnotes = 'x'\n", "integrations.a.kind"),
    Case("integration-unknown-kind", '[integrations.a]\nkind = "nope"\n', "integrations.a.kind"),
    Case("integration-kind-number", "[integrations.a]\nkind = 5\n", "integrations.a.kind"),
    Case("webhook-header-empty", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nheader = ""\n'
         'secret_env = "HOME"\n', "integrations.a.webhook.header"),
    Case("webhook-header-space", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nheader = "X Sig"\n'
         'secret_env = "HOME"\n', "integrations.a.webhook.header"),
    Case("webhook-header-newline", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         'header = "X-Sig\\nX-Other"\nsecret_env = "HOME"\n', "integrations.a.webhook.header"),
    Case("webhook-inline-secret", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         f'secret = "{WEBHOOK_SECRET}"\n', "integrations.a.webhook.secret"),
    Case("secret-file-missing", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         'secret_file = "/nonexistent/secret"\n', "integrations.a.webhook.secret_file"),
    Case("secret-file-directory", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         'secret_file = "/"\n', "integrations.a.webhook.secret_file"),
    Case("secret-file-device", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         'secret_file = "/dev/zero"\n', "integrations.a.webhook.secret_file"),
    Case("secret-file-tty", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         'secret_file = "/dev/tty"\n', "integrations.a.webhook.secret_file"),
    Case("secret-file-number", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nsecret_file = 5\n',
         "integrations.a.webhook.secret_file"),
    Case("secret-env-unset", '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
         'secret_env = "CRMSYNC_CORPUS_UNSET_VARIABLE"\n', "integrations.a.webhook.secret_env"),
    Case("schedule-both", '[integrations.a]\nkind = "fake"\n[integrations.a.schedules.once]\n'
         'daily_at = "02:00"\nevery = "5m"\n', "integrations.a.schedules.once"),
    Case("schedule-bad-time", '[integrations.a]\nkind = "fake"\n[integrations.a.schedules.once]\n'
         'daily_at = "25:99"\n', "integrations.a.schedules.once.daily_at"),
    Case("syntax-error", "[daemon\n", ""),
    Case("duplicate-key", '[daemon]\ntimezone = "UTC"\ntimezone = "UTC"\n', ""),
    Case("duplicate-integration", '[integrations.a]\nkind = "fake"\n[integrations.a]\nkind = "fake"\n', ""),
    Case("nul-in-file", "[daemon]\x00\n", ""),
    Case("ea-window-1000d", "", "integrations.ea.ea_window"),  # built by the test: needs secret files
]
# raw bytes files for load_config (the file-level cases)
CONFIG_FILE_CASES: list[Case] = [
    Case("latin1-file", '[daemon]\ntimezone = "UTC" # caf\xe9\n'.encode("latin-1"), ""),
    Case("utf16-file", '[daemon]\ntimezone = "UTC"\n'.encode("utf-16"), ""),
    Case("binary-file", bytes(range(256)), ""),
    Case("lone-surrogate-bytes", b'[daemon]\nnotes = "\xed\xa0\x80"\n', ""),
]


# -- upstream answers: (status, content type, body) for one call per system; expect an ApiError subclass ----

@dataclass(frozen=True)
class Answer:
    id: str
    status: int
    content_type: str
    body: bytes
    # the documented ApiError subclass (its class name) the call must raise, or "skipped": an export file's
    # unparseable rows are logged and skipped, by design (they repeat in later windows)
    expect: str


def _echo_page(status: int) -> bytes:
    return (f"<html><h1>{status}</h1><pre>Authorization: Basic ZWE6{EA_KEY}\nX-Efficy-ApiKey: {EFFICY_KEY}\n"
            f"Cookie: EFFICY_SESSION={EFFICY_KEY}\nclient_secret={APSIS_SECRET}\npassword={MC_PASSWORD}</pre>"
            "</html>").encode()


def _common(prefix: str, json_type: str) -> list[Answer]:
    """Answers every API can give: broken bodies, error pages echoing secrets, server errors."""
    return [
        Answer(f"{prefix}-500-echo", 500, "text/html", _echo_page(500), "RetriableApiError"),
        Answer(f"{prefix}-503-empty", 503, "text/plain", b"", "RetriableApiError"),
        Answer(f"{prefix}-429", 429, "text/plain", b"slow down", "RateLimitedError"),
        Answer(f"{prefix}-401-echo", 401, "text/html", _echo_page(401), "AuthError"),
        Answer(f"{prefix}-403", 403, json_type, b'{"error": "forbidden"}', "FatalApiError"),
        Answer(f"{prefix}-502-binary", 502, "application/octet-stream", bytes(range(256)), "RetriableApiError"),
        Answer(f"{prefix}-500-deep", 500, json_type, DEEP, "RetriableApiError"),
    ]


EA_ANSWERS: list[Answer] = [
    *_common("ea", "application/json"),
    Answer("ea-200-not-json", 200, "application/json", b"<html>maintenance</html>", "MalformedResponseError"),
    Answer("ea-200-truncated", 200, "application/json", b'{"vanId": 1, "firstN', "MalformedResponseError"),
    Answer("ea-200-deep", 200, "application/json", DEEP, "MalformedResponseError"),
    Answer("ea-200-nan", 200, "application/json", b'{"vanId": NaN}', "MalformedResponseError"),
    Answer("ea-200-latin1", 200, "application/json", b'{"firstName": "caf\xe9"}', "MalformedResponseError"),
    Answer("ea-200-array", 200, "application/json", b"[1, 2, 3]", "MalformedResponseError"),
    Answer("ea-200-string", 200, "application/json", b'"hello"', "MalformedResponseError"),
    Answer("ea-200-null", 200, "application/json", b"null", "MalformedResponseError"),
    Answer("ea-200-vanid-text", 200, "application/json", b'{"vanId": "abc"}', "MalformedResponseError"),
    Answer("ea-400-errors-echo", 400, "application/json",
           json.dumps({"errors": [{"code": "X", "text": f"bad key {EA_KEY}"}]}).encode(), "FatalApiError"),
    Answer("ea-400-errors-deep", 400, "application/json", b'{"errors": ' + DEEP + b"}", "FatalApiError"),
    Answer("ea-404", 404, "application/json", b'{"errors": [{"code": "NOT_FOUND", "text": "x"}]}',
           "NotFoundError"),
]

# the six column names EveryAction is known to write (a file without them is refused, issue 7 item 11)
EA_CSV_HEADER = b"VanID,FirstName,LastName,Phone,PhoneOptInStatus,DateCreated\n"

EA_CSV_ANSWERS: list[Answer] = [
    Answer("ea-csv-binary", 200, "text/csv", bytes(range(256)) * 4, "ExportColumnMissingError"),
    Answer("ea-csv-no-header", 200, "text/csv", b"", "skipped"),
    Answer("ea-csv-wrong-header", 200, "text/csv", b"a,b,c\n1,2,3\n", "ExportColumnMissingError"),
    Answer("ea-csv-nul", 200, "text/csv", EA_CSV_HEADER + b"1\x00,a,b,2025550143,1,2\n", "skipped"),
    Answer("ea-csv-unclosed-quote", 200, "text/csv",
           b'VanID,FirstName,LastName,Phone,PhoneOptInStatus,DateCreated\n"1,2026-01-01\n', "skipped"),
    Answer("ea-csv-vanid-text", 200, "text/csv", EA_CSV_HEADER + b"abc,a,b,,,2026-01-01T00:00:00\n",
           "skipped"),
    Answer("ea-csv-huge-field", 200, "text/csv", EA_CSV_HEADER + b"9" * 200000 + b",x\n",
           "MalformedResponseError"),
    Answer("ea-csv-403-echo", 403, "text/html", _echo_page(403), "FatalApiError"),
    Answer("ea-csv-500-echo", 500, "text/html", _echo_page(500), "RetriableApiError"),
]

MC_ANSWERS: list[Answer] = [
    *_common("mc", "application/xml"),
    Answer("mc-200-not-xml", 200, "application/xml", b"this is not xml", "MalformedResponseError"),
    Answer("mc-200-truncated", 200, "application/xml", b"<response success='true'><profile><phone",
           "MalformedResponseError"),
    Answer("mc-200-billion-laughs", 200, "application/xml",
           b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
           b"<response>&lol2;</response>", "FatalApiError"),
    Answer("mc-200-external-entity", 200, "application/xml",
           b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><response>&x;</response>',
           "FatalApiError"),
    Answer("mc-200-deep-xml", 200, "application/xml", b"<a>" * 5000 + b"</a>" * 5000, "MalformedResponseError"),
    Answer("mc-200-json", 200, "application/json", b'{"success": true}', "MalformedResponseError"),
    Answer("mc-200-latin1", 200, "application/xml", b"<response success='true'>caf\xe9</response>",
           "MalformedResponseError"),
    Answer("mc-200-error-echo", 200, "application/xml",
           f"<response success='false'><error id='5' message='Invalid password {MC_PASSWORD}'/></response>"
           .encode(), "FatalApiError"),
    Answer("mc-200-empty", 200, "application/xml", b"", "MalformedResponseError"),
]

EFFICY_ANSWERS: list[Answer] = [
    *_common("efficy", "application/json"),
    Answer("efficy-200-not-json", 200, "application/json", b"<html>login</html>", "MalformedResponseError"),
    Answer("efficy-200-deep", 200, "application/json", DEEP, "MalformedResponseError"),
    Answer("efficy-200-object", 200, "application/json", b'{"a": 1}', "MalformedResponseError"),
    Answer("efficy-200-empty-array", 200, "application/json", b"[]", "MalformedResponseError"),
    Answer("efficy-200-nan", 200, "application/json", b"[NaN]", "MalformedResponseError"),
    Answer("efficy-200-null", 200, "application/json", b"null", "MalformedResponseError"),
    Answer("efficy-200-context-string", 200, "application/json", b'["x"]', "MalformedResponseError"),
    Answer("efficy-200-error-echo", 200, "application/json",
           json.dumps([{"#error": f"Invalid api key {EFFICY_KEY}", "@name": "api"}]).encode(), "FatalApiError"),
    Answer("efficy-200-latin1", 200, "application/json", b'[{"@name": "caf\xe9"}]', "MalformedResponseError"),
]

def _query_answer(rows: bytes, after_rows: bytes = b"", after_context: bytes = b"") -> bytes:
    """A saved query's answer (api ``query``): a dataset of rows, then what follows them in the same body."""
    return (b'[{"#id": "c1", "@name": "api", "@func": [{"@name": "query", "key": 5, "#result": '
            b'{"#class": "dataset", "#data": [' + rows + b"]}" + after_rows + b"}]}" + after_context + b"]")


_ROWS = b", ".join(b'{"K_CONTACT": "%d", "NAME": "Doe", "EMAIL1": "d%d@x.be"}' % (i, i) for i in range(1, 50))

# the saved query's answer is read as a stream (issue 8): what a cut, late error or huge row must still give
EFFICY_QUERY_ANSWERS: list[Answer] = [
    Answer("efficy-query-cut-in-a-row", 200, "application/json", _query_answer(_ROWS)[:900],
           "MalformedResponseError"),
    Answer("efficy-query-cut-between-rows", 200, "application/json",
           _query_answer(_ROWS)[:_query_answer(_ROWS).index(b"}, {") + 3], "MalformedResponseError"),
    Answer("efficy-query-cut-after-the-rows", 200, "application/json", _query_answer(_ROWS)[:-3],
           "MalformedResponseError"),
    Answer("efficy-query-error-after-the-rows", 200, "application/json",
           _query_answer(_ROWS, b', "#error": "Query 5 not found"'), "NotFoundError"),
    Answer("efficy-query-exception-after-the-context", 200, "application/json",
           _query_answer(_ROWS, after_context=b', {"@name": "exception", "#error": {"errorstring": "boom"}}'),
           "FatalApiError"),
    Answer("efficy-query-session-gone-after-the-rows", 200, "application/json",
           _query_answer(_ROWS, b', "#error": "Please Logon to Database"'), "AuthError"),
    Answer("efficy-query-error-echo-after-the-rows", 200, "application/json",
           _query_answer(_ROWS, b', "#error": "Invalid api key ' + EFFICY_KEY.encode() + b'"'), "FatalApiError"),
    Answer("efficy-query-huge-row", 200, "application/json",
           _query_answer(_ROWS + b', {"K_CONTACT": 99, "NOTE": "' + b"x" * (5 * 2 ** 20) + b'"}'),
           "MalformedResponseError"),
    Answer("efficy-query-deep-row", 200, "application/json",
           _query_answer(b'{"K_CONTACT": 1, "X": ' + b"[" * 60 + b"]" * 60 + b"}"), "MalformedResponseError"),
    Answer("efficy-query-nan-in-a-row", 200, "application/json", _query_answer(b'{"K_CONTACT": NaN}'),
           "MalformedResponseError"),
    Answer("efficy-query-latin1-in-a-row", 200, "application/json",
           _query_answer(b'{"K_CONTACT": 1, "NAME": "caf\xe9"}'), "MalformedResponseError"),
]

APSIS_ANSWERS: list[Answer] = [
    *_common("apsis", "application/json"),
    Answer("apsis-200-not-json", 200, "application/json", b"<html>gateway</html>", "MalformedResponseError"),
    Answer("apsis-200-deep", 200, "application/json", DEEP, "MalformedResponseError"),
    Answer("apsis-200-array", 200, "application/json", b"[1]", "MalformedResponseError"),
    Answer("apsis-200-nan", 200, "application/json", b'{"items": NaN}', "MalformedResponseError"),
    Answer("apsis-200-items-string", 200, "application/json", b'{"items": "x"}', "MalformedResponseError"),
    Answer("apsis-200-items-deep", 200, "application/json", b'{"items": ' + DEEP + b"}", "MalformedResponseError"),
    Answer("apsis-400-problem-echo", 400, "application/problem+json",
           json.dumps({"title": "bad", "detail": f"secret {APSIS_SECRET} refused"}).encode(), "FatalApiError"),
    Answer("apsis-200-null", 200, "application/json", b"null", "MalformedResponseError"),
]
