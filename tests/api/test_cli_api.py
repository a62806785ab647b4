"""`gateway api token create`: a token shown once, and the [[api.tokens]] table that makes the
running configuration accept it — never the token itself in the file. Bad token tables are
config errors naming file and key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.api.context import token_source
from gateway.cli.main import main as cli_main
from gateway.config.errors import ConfigError
from gateway.config.loader import load


def create(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli_main(["--config", str(config), "api", "token", "create", *args]) == 0
    return capsys.readouterr().out


def test_a_created_token_is_printed_once_and_its_table_makes_the_config_accept_it(
    make_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config()
    text = create(config, capsys, "zendesk-bridge", "--scope", "write")
    (token,) = re.findall(r"^\s+(igw_\S+)$", text, re.M)
    table = text[text.index("[[api.tokens]]") :]
    assert token not in table
    with (config / "gateway.toml").open("a") as fh:
        fh.write("\n" + table)
    assert token not in (config / "gateway.toml").read_text()
    settings = load(config)
    principal = token_source(lambda: settings)().authenticate(token)
    assert principal is not None and principal.name == "zendesk-bridge"
    assert principal.scopes == {"read", "write"}

    other = create(config, capsys, "zendesk-bridge")
    assert re.findall(r"^\s+(igw_\S+)$", other, re.M) != [token]  # random each time
    assert 'scopes = ["read"]' in other  # the least by default
    assert cli_main(["--config", str(config), "api", "token", "create", "two words"]) == 2


def problems(config: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load(config)
    return "\n".join(str(p) for p in caught.value.problems)


def test_bad_token_tables_are_config_errors_naming_file_and_key(
    make_config: Callable[..., Path],
) -> None:
    config = make_config()
    digest = "a" * 64
    with (config / "gateway.toml").open("a") as fh:
        fh.write(
            f'\n[[api.tokens]]\nname = "ann"\nsha256 = "{digest}"\nscopes = ["read"]\n'
            f'\n[[api.tokens]]\nname = "ann"\nsha256 = "{digest}"\nscopes = ["read"]\n'
            '\n[[api.tokens]]\nname = "bob"\nsha256 = "igw_plaintext_token"\nscopes = ["root"]\n'
        )
    found = problems(config)
    assert "gateway.toml" in found
    assert "api.tokens[2].sha256" in found and "never the token itself" in found
    assert "api.tokens[2].scopes" in found and "'root'" in found
    assert "igw_plaintext_token" not in found  # a pasted token is not echoed back
    text = (config / "gateway.toml").read_text()
    text = text.replace('"igw_plaintext_token"', f'"{"b" * 64}"').replace('["root"]', '["admin"]')
    (config / "gateway.toml").write_text(text)
    found = problems(config)
    assert "api.tokens[1].name" in found and "duplicate token name 'ann'" in found
    assert "api.tokens[1].sha256" in found and "the same token as 'ann'" in found
