"""forwarding.toml: the sample enables nothing, every mistake is named by file, key and line,
secrets come only from the environment or a credential, and SIGHUP reloads it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.loader import load
from gateway.outbound import forwarding_sender
from gateway.service.runtime import RuntimeBox, load_runtime
from tests.forwarding.support import ROOT, WEBHOOK, webhook_toml, write_forwarding
from tests.helpers import configure

URL = "https://desk.example.com/hooks/intake"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The sample config directory (validation needs no trained model, unlike make_config)."""
    return configure(ROOT / "config", tmp_path / "config", tmp_path / "state")


def test_the_sample_forwarding_toml_is_valid_and_enables_no_webhook(config_dir: Path) -> None:
    settings = load(config_dir)
    assert settings.forwarding.webhook == ()
    assert settings.forwarding.poll_seconds == 1.0


def test_a_webhook_is_read_with_its_defaults(config_dir: Path, secrets_env: dict[str, str]) -> None:
    config = config_dir
    write_forwarding(config, f'[[webhook]]\nname = "{WEBHOOK}"\nurl = "{URL}"\n')
    (hook,) = load(config).forwarding.webhook
    assert (hook.name, hook.url, hook.queues, hook.events) == (
        WEBHOOK,
        URL,
        (),
        ("created", "updated"),
    )
    assert (hook.max_attempts, hook.timeout_seconds, hook.backoff_seconds) == (12, 10.0, 30.0)


@pytest.mark.parametrize(
    ("toml", "key", "message"),
    [
        (webhook_toml("Help Desk", URL), "webhook[0].name", "lowercase letters"),
        (webhook_toml(WEBHOOK, "ftp://desk.example.com/x"), "webhook[0].url", "http(s) URL"),
        (
            webhook_toml(WEBHOOK, "https://user:pw@desk.example.com/x"),
            "webhook[0].url",
            "without credentials",
        ),
        (webhook_toml(WEBHOOK, "http://desk.example.com/x"), "webhook[0].url", "unencrypted"),
        (webhook_toml(WEBHOOK, URL, queues=["suport"]), "webhook[0].queues", "'suport'"),
        (webhook_toml(WEBHOOK, URL, events=["deleted"]), "webhook[0].events[0]", "'created'"),
        (webhook_toml(WEBHOOK, URL, events=[]), "webhook[0].events", "at least one"),
        (webhook_toml(WEBHOOK, URL, max_attempts=0), "webhook[0].max_attempts", "from 1 to 100"),
        (webhook_toml(WEBHOOK, URL, timeout_seconds=600), "webhook[0].timeout_seconds", "120"),
        (
            webhook_toml(WEBHOOK, URL, backoff_seconds=10, max_backoff_seconds=5),
            "webhook[0].backoff_seconds",
            "max_backoff_seconds",
        ),
        (webhook_toml(WEBHOOK, URL, secret="x"), "webhook[0].secret", "unknown key"),
        (webhook_toml(WEBHOOK, URL) * 2, "webhook[1].name", "duplicate webhook name"),
        (
            webhook_toml("billing-desk", URL) + webhook_toml("billing_desk", URL),
            "webhook[1].name",
            "would share the secret",
        ),
    ],
)
def test_a_mistake_is_an_error_naming_file_key_and_line(
    config_dir: Path,
    secrets_env: dict[str, str],
    toml: str,
    key: str,
    message: str,
) -> None:
    config = config_dir
    write_forwarding(config, toml)
    with pytest.raises(ConfigError) as caught:
        load(config)
    problems = [p for p in caught.value.problems if p.file == "forwarding.toml"]
    assert [p.key for p in problems] == [key], caught.value
    assert message in problems[0].message
    assert problems[0].line is not None


def test_a_missing_secret_is_no_config_error_but_is_logged_as_one_naming_where_it_goes(
    config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As for every secret here: operators' commands run without the daemon's credentials.
    The sender never sends unsigned (test_delivery), and worker 0 says why at start."""
    write_forwarding(config_dir, webhook_toml("zammad", URL))
    settings = load(config_dir)
    with caplog.at_level(logging.ERROR, logger="gateway.outbound.forwarding_sender"):
        (line,) = forwarding_sender.warn_missing_secrets(settings.forwarding)
    assert "$GATEWAY_FORWARD_SECRET_ZAMMAD" in line and "'forward-secret-zammad'" in line
    assert caplog.messages == [line]


def test_the_secret_may_come_from_a_systemd_credential(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "forward-secret-zammad").write_text("from-a-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    write_forwarding(config_dir, webhook_toml("zammad", URL))
    settings = load(config_dir)
    assert forwarding_sender.warn_missing_secrets(settings.forwarding) == []


def test_sighup_reload_picks_up_a_new_webhook_and_keeps_the_old_config_on_a_bad_one(
    make_config: Callable[..., Path], secrets_env: dict[str, str]
) -> None:
    config = make_config()
    box = RuntimeBox(config, load_runtime(config))
    assert box.current.settings.forwarding.webhook == ()
    write_forwarding(config, webhook_toml(WEBHOOK, URL))
    assert box.reload()
    assert [h.name for h in box.current.settings.forwarding.webhook] == [WEBHOOK]
    (config / "forwarding.toml").write_text('[[webhook]]\nname = "x"\n')  # no url
    assert not box.reload()
    assert "forwarding.toml" in (box.last_error or "")
    assert [h.name for h in box.current.settings.forwarding.webhook] == [WEBHOOK]
