"""find_secrets(): exact spans of credential values; placeholders and prose pass.

Every key below is synthetic and assembled at run time, so that no secret
scanner mistakes this file for a leak.
"""

from __future__ import annotations

import base64
import json

import pytest

from engine.safety.credentials import find_secrets, is_placeholder

ALNUM = "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zA7bC9dE1fG3hI5jK7lM9nO1pQ3rS5tU7vW9"
AWS_ID = "AKIA" + "Q3EGRZ7XK2MJ5PLB"
AWS_TEMP_ID = "ASIA" + "Y7W2KD9QX4MN3BVT"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYzQ3k8aB1cD"
GHP = "ghp_" + ALNUM[:36]
GHS = "ghs_" + ALNUM[10:46]
GITHUB_PAT = "github_pat_" + "11ABCDEFG0" + ALNUM[:12] + "_" + ALNUM[:59]
OPENAI = "sk-" + ALNUM[:48]
OPENAI_PROJ = "sk-" + "proj-" + ALNUM[:40] + "_-" + ALNUM[40:70]
SLACK = "xox" + "b-123456789012-" + ALNUM[:24]
GOOGLE = "AI" + "za" + "Sy" + ALNUM[:33]
STRIPE = "sk" + "_live_" + ALNUM[:24]
STRIPE_RESTRICTED = "rk" + "_live_" + ALNUM[5:29]


def b64url(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


JWT = ".".join(
    [b64url({"alg": "HS256", "typ": "JWT"}), b64url({"sub": "42"}), b64url(b"s" * 32)]
)
PEM_BODY = "\n".join([ALNUM[:64], ALNUM[4:68], ALNUM[:20] + "=="])
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"
OPENSSH = (
    f"-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n"
    "-----END OPENSSH PRIVATE KEY-----"
)


def found(text: str) -> list[tuple[str, str, str]]:
    return [(f.rule, f.label, text[f.start : f.end]) for f in find_secrets(text)]


@pytest.mark.parametrize(
    ("text", "rule", "label", "value"),
    [
        (f"aws_access_key_id = {AWS_ID}", "aws_access_key_id", "API_KEY", AWS_ID),
        (f"临时密钥{AWS_TEMP_ID}。", "aws_access_key_id", "API_KEY", AWS_TEMP_ID),
        (
            f'aws_secret_access_key = "{AWS_SECRET}"',
            "aws_secret_key",
            "API_KEY",
            AWS_SECRET,
        ),
        (f"token {GHP} leaked", "github_token", "TOKEN", GHP),
        (f"GH_TOKEN: {GHS}", "github_token", "TOKEN", GHS),
        (f"pat={GITHUB_PAT}", "github_token", "TOKEN", GITHUB_PAT),
        (f"export OPENAI_API_KEY={OPENAI}", "openai_key", "API_KEY", OPENAI),
        (f'key = "{OPENAI_PROJ}"', "openai_key", "API_KEY", OPENAI_PROJ),
        (f"slack {SLACK} ok", "slack_token", "TOKEN", SLACK),
        (f"maps key {GOOGLE}.", "google_api_key", "API_KEY", GOOGLE),
        (f"stripe {STRIPE}", "stripe_key", "API_KEY", STRIPE),
        (f"{STRIPE_RESTRICTED} here", "stripe_key", "API_KEY", STRIPE_RESTRICTED),
        (f"Authorization: Bearer {JWT}", "jwt", "TOKEN", JWT),
        (
            "-H 'Authorization: Bearer Zx9Yw8Vu7Ts6Rq5Po4'",
            "bearer_token",
            "TOKEN",
            "Zx9Yw8Vu7Ts6Rq5Po4",
        ),
        (f"请看这个密钥：\n{PEM}\n谢谢", "private_key", "PRIVATE_KEY", PEM),
        (f"{OPENSSH} trailing", "private_key", "PRIVATE_KEY", OPENSSH),
        (
            "db postgres://admin:S3cr3t!pw@db.example.com:5432/app",
            "uri_password",
            "PASSWORD",
            "S3cr3t!pw",
        ),
        (
            "连接 mysql://root:r00tpass@10.0.0.5/db 即可",
            "uri_password",
            "PASSWORD",
            "r00tpass",
        ),
        ('password = "hunter2hunter"', "assignment", "PASSWORD", "hunter2hunter"),
        ("DB_PASSWORD=Tr0ub4dor&3xyz.", "assignment", "PASSWORD", "Tr0ub4dor&3xyz"),
        (
            '{"api_key": "a1b2c3d4e5f6g7h8"}',
            "assignment",
            "API_KEY",
            "a1b2c3d4e5f6g7h8",
        ),
        ("client_secret: 9f8e7d6c5b4a", "assignment", "API_KEY", "9f8e7d6c5b4a"),
        ("ACCESS_TOKEN=abcdefgh1234", "assignment", "TOKEN", "abcdefgh1234"),
        (
            "passphrase: 'correct horse battery'",
            "assignment",
            "PASSWORD",
            "correct horse battery",
        ),
        ("密码：abc12345，谢谢", "assignment", "PASSWORD", "abc12345"),
        ("我的密码是Qwerty123456。", "assignment", "PASSWORD", "Qwerty123456"),
        ("令牌=Zx9Yw8Vu7Ts6", "assignment", "TOKEN", "Zx9Yw8Vu7Ts6"),
    ],
)
def test_finds_the_value_only(text, rule, label, value):
    assert found(text) == [(rule, label, value)]


def test_scores_follow_how_specific_the_rule_is():
    text = f"{GHP} postgres://u:S3cr3tpw@h/x password=hunter2hunter"
    findings = find_secrets(text)
    assert [(f.rule, f.score) for f in findings] == [
        ("github_token", 0.95),
        ("uri_password", 0.9),
        ("assignment", 0.8),
    ]
    assert {(f.category, f.detector) for f in findings} == {("secrets", "secrets")}


def test_a_truncated_pem_block_is_found_up_to_its_body_end():
    text = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n\nthat is all"
    ((rule, _label, value),) = found(text)
    assert rule == "private_key"
    assert value.rstrip() == f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}"


@pytest.mark.parametrize(
    "text",
    [
        f"OPENAI_API_KEY={OPENAI}",
        f"token={JWT}",
        f'"api_key": "{GOOGLE}"',
        f"aws_secret_access_key={AWS_SECRET}",
    ],
)
def test_a_prefixed_key_in_an_assignment_is_one_finding(text):
    ((rule, _label, _value),) = found(text)
    assert rule != "assignment"


@pytest.mark.parametrize(
    "text",
    [
        "password=xxxxxxxx",
        "password: ********",
        "api_key=<your-key>",
        "API_KEY=${API_KEY}",
        "token: {{ secrets.TOKEN }}",
        "password=$DB_PASSWORD",
        "password: changeme",
        "password=password",
        "token = tokenizer.encode(text)",
        "password=user_password",
        "password=userPassword",
        "secret=os.environ['SECRET']",
        "api_key=YOUR_API_KEY_HERE",
        "api_key: example-key-123",
        "AKIA" + "IOSFODNN7EXAMPLE",  # the key in AWS's documentation
        "ghp_" + "x" * 36,
        "postgres://user:password@localhost/db",
        "postgres://user:****@localhost/db",
        "-----BEGIN PRIVATE KEY----- is the header line",
        "Authorization: Bearer <your-token-here>",
        "password=abc123",  # too short
    ],
)
def test_skips_placeholders(text):
    assert find_secrets(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "the secret: Anthropic's plan is public",
        "a token: 8 characters long",
        "bypass=abcdefgh123",
        "passport: E12345678",
        "use sk-learn-compatible-estimator-wrapper",
        "http://host:8080/path@x",
        "see https://example.com/a:b@c",
        "the key: distinguishing feature",
        "keyboard=mechanical123",
        "API keys look like sk-... and start with AKIA",
        "请输入密码。密码长度至少8位",
    ],
)
def test_ignores_prose_and_look_alikes(text):
    assert find_secrets(text) == []


def test_is_placeholder():
    assert is_placeholder("<your-token>") and is_placeholder("XXXXXXXXXXXX")
    assert not is_placeholder("hunter2hunter") and not is_placeholder("Zx9Yw8Vu7Ts6")


def test_findings_never_overlap():
    text = f'{PEM}\npassword="{OPENAI}" url=https://a:S3cr3tpw@h token={JWT}'
    findings = find_secrets(text)
    assert [f.rule for f in findings] == [
        "private_key",
        "openai_key",
        "uri_password",
        "jwt",
    ]
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:], strict=False))
