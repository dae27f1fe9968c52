from __future__ import annotations

from pathlib import Path

import pytest

from scanet_node.config import load_settings
from scanet_node.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_work_on_a_fresh_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert settings.node.ae_title == "SCANET"
    assert settings.node.port == 11112
    assert settings.node.max_associations == 8
    assert settings.security.allowed_calling_aets == []
    assert settings.catalog_url.startswith("sqlite:///")
    assert settings.catalog_url.endswith("scanet-data/catalog.sqlite")
    assert settings.destinations == []


def test_config_toml_in_working_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, '[node]\nae_title = "STROKE1"\n')
    monkeypatch.chdir(tmp_path)
    assert load_settings(None, environ={}).node.ae_title == "STROKE1"


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).parents[2] / "config.example.toml"
    settings = load_settings(example, environ={})
    assert settings.destinations[0].ae_title == "ORTHANC"
    assert settings.pipeline.series_settle_seconds > 0


def test_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[node]
ae_title = "SCANET1"
host = "0.0.0.0"
port = 104
data_dir = "/var/lib/scanet"
max_associations = 4

[security]
allowed_calling_aets = ["CT01", "PACS"]

[catalog]
url = "postgresql+psycopg://scanet@db/scanet"

[pipeline]
series_settle_seconds = 45

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
""",
    )
    s = load_settings(path, environ={})
    assert s.node.port == 104 and s.node.host == "0.0.0.0"
    assert s.security.allowed_calling_aets == ["CT01", "PACS"]
    assert s.catalog_url == "postgresql+psycopg://scanet@db/scanet"
    assert s.pipeline.series_settle_seconds == 45
    assert s.destinations[0].name == "pacs"


def test_the_settle_sweep_keeps_up_with_the_shorter_settle_time() -> None:
    from scanet_node.config import PipelineSettings

    assert PipelineSettings().settle_after_release_seconds == 1.0
    assert PipelineSettings().settle_sweep_seconds == 0.25  # a quarter of the 1 s grace
    assert PipelineSettings(settle_after_release_seconds=8).settle_sweep_seconds == 1.0
    assert PipelineSettings(settle_after_release_seconds=0).settle_sweep_seconds == 0.25
    assert PipelineSettings(series_settle_seconds=0.4).settle_sweep_seconds == 0.2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[node]\nport = 70000\n", "[node] port: Input should be less than or equal to 65535"),
        ('[node]\nport = "abc"\n', "[node] port:"),
        ("[node]\nmax_associations = 0\n", "[node] max_associations:"),
        ('[node]\nae_title = "MUCH_TOO_LONG_AE_TITLE"\n', "[node] ae_title:"),
        ('[node]\nae_title = "BAD\\\\AET"\n', "[node] ae_title:"),
        ("[node]\nprot = 104\n", "[node] prot: unknown key"),
        ("[nodes]\nport = 104\n", "nodes: unknown key"),
        (
            '[security]\nallowed_calling_aets = [""]\n',
            "[security] allowed_calling_aets: '' is not a valid AE title",
        ),
        ('[security]\ntls_cert = "/nonexistent/cert.pem"\n', "tls_key is required"),
        ('[catalog]\nurl = "mysql://x"\n', "[catalog] url: 'mysql://x' is not a supported"),
        ("[pipeline]\nseries_settle_seconds = 0\n", "[pipeline] series_settle_seconds:"),
        (
            "[pipeline]\nsettle_after_release_seconds = -1\n",
            "[pipeline] settle_after_release_seconds:",
        ),
        ('[imaging]\nextra_cta_patterns = ["(unclosed"]\n', "[imaging] extra_cta_patterns:"),
        (
            "[imaging]\ncta_min_vessel_fraction = 0.0001\n",
            "cta_min_vessel_fraction must be greater than ncct_max_vessel_fraction",
        ),
        (
            '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\nport = 0\n',
            "[[destinations]] #1 port:",
        ),
        (
            '[[destinations]]\nname = "a"\nae_title = "A"\nhost = "h"\n',
            "[[destinations]] #1 port: Field required",
        ),
        ('[model]\ndevice = "tpu"\n', "[model] device: Input should be 'auto', 'cpu' or 'cuda'"),
        ('[model]\ncheckpoint = "/nowhere/scanet.pt"\n', "[model] checkpoint: file '/nowhere"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(err.value)
    assert str(tmp_path / "config.toml") in str(err.value)


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("x")
    path = write(tmp_path, f'[security]\ntls_cert = "{tmp_path}/nope.pem"\ntls_key = "{key}"\n')
    with pytest.raises(ConfigError, match=r"tls_cert: file .*nope\.pem' does not exist"):
        load_settings(path, environ={})


def test_duplicate_destination_names(tmp_path: Path) -> None:
    dest = '[[destinations]]\nname = "pacs"\nae_title = "A"\nhost = "h"\nport = 104\n'
    with pytest.raises(ConfigError, match="repeated: pacs"):
        load_settings(write(tmp_path, dest + dest), environ={})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[node\n"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nport = 1000\nhost = "10.1.1.1"\nae_title = "FILE"\n')
    env = {"SCANET__NODE__PORT": "2000", "SCANET__NODE__HOST": "10.2.2.2", "HOME": "/x"}
    s = load_settings(path, environ=env, overrides={"node": {"port": 3000}})
    assert (s.node.port, s.node.host, s.node.ae_title) == (3000, "10.2.2.2", "FILE")


def test_env_list_value_and_bad_env_name(tmp_path: Path) -> None:
    env = {"SCANET__SECURITY__ALLOWED_CALLING_AETS": '["CT1", "CT2"]'}
    assert load_settings(None, environ=env).security.allowed_calling_aets == ["CT1", "CT2"]
    with pytest.raises(ConfigError, match="SCANET__PORT"):
        load_settings(None, environ={"SCANET__PORT": "1"})
    with pytest.raises(ConfigError, match=r"environment\):\n  \[node\] port:"):
        load_settings(None, environ={"SCANET__NODE__PORT": "many"})
