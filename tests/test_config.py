"""Configuration: typo-rejecting models, precedence file < env < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from surveillance.core.config import EXAMPLE_CONFIG, load_settings
from surveillance.core.errors import ConfigError, PseudonymKeyError
from surveillance.intake.pseudonym import Pseudonymizer, generate_key_file, load_pseudonymizer


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE_CONFIG, env={})
    model = settings.model("cxr-pneumothorax")
    assert model.findings == {"pneumothorax": 0.5}
    sensitivity = next(b for b in model.baselines if b.metric == "sensitivity")
    assert (sensitivity.value, sensitivity.alert_limit) == (0.905, 0.85)


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[service]\ndb_url = "sqlite:///from-file.db"\n')
    assert load_settings(file, env={}).service.db_url == "sqlite:///from-file.db"
    env = {"SURVEILLANCE_DB_URL": "sqlite:///from-env.db"}
    assert load_settings(file, env=env).service.db_url == "sqlite:///from-env.db"
    flags = {"service.db_url": "sqlite:///from-flag.db"}
    assert load_settings(file, env=env, overrides=flags).service.db_url == "sqlite:///from-flag.db"
    assert load_settings(None, env={"SURVEILLANCE_CONFIG": str(file)}).service.db_url == (
        "sqlite:///from-file.db"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('[service]\ndb_ulr = "x"\n', "service.db_ulr: unknown setting", id="typo"),
        pytest.param("[drift]\nalpha = 2\n", "drift.alpha", id="alpha-out-of-range"),
        pytest.param("[service\n", "not valid TOML", id="broken-toml"),
        pytest.param(
            '[[models]]\nname="m"\nversion="1"\nintended_use="x"\nfindings={a=0.5}\n'
            '[[models.baselines]]\nfinding="b"\nmetric="sensitivity"\nvalue=0.9\n'
            'alert_limit=0.8\nsource_document="s"\n',
            "not in findings",
            id="baseline-for-unknown-finding",
        ),
        pytest.param(
            '[[models]]\nname="m"\nversion="1"\nintended_use="x"\nfindings={a=0.5}\n'
            '[[models.baselines]]\nfinding="a"\nmetric="sensitivity"\nvalue=0.8\n'
            'alert_limit=0.9\nsource_document="s"\n',
            "above the cleared value",
            id="alert-limit-above-baseline",
        ),
    ],
)
def test_invalid_config_says_what_to_fix(tmp_path: Path, toml: str, message: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(file, env={})
    assert str(file) in str(info.value)


def test_pseudonyms_are_keyed_and_domain_separated(tmp_path: Path) -> None:
    a, b = Pseudonymizer(b"a" * 32), Pseudonymizer(b"b" * 32)
    assert a("study", "1.2.3") == a("study", "1.2.3")
    assert a("study", "1.2.3") != b("study", "1.2.3")
    assert a("study", "1.2.3") != a("patient", "1.2.3")
    assert len(a("study", "1.2.3")) == 64


def test_production_mode_requires_a_key_and_demo_makes_one(tmp_path: Path) -> None:
    with pytest.raises(PseudonymKeyError, match="SURVEILLANCE_PSEUDONYM_KEY_FILE"):
        load_pseudonymizer(None, mode="production")
    with pytest.raises(PseudonymKeyError, match="does not exist"):
        load_pseudonymizer(tmp_path / "missing.key", mode="production")
    demo = load_pseudonymizer(None, mode="demo", demo_dir=tmp_path)
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0
    again = load_pseudonymizer(None, mode="demo", demo_dir=tmp_path)
    assert demo("study", "x") == again("study", "x")
    key = generate_key_file(tmp_path / "k" / "prod.key")
    with pytest.raises(PseudonymKeyError, match="refusing to replace"):
        generate_key_file(key)
