"""loglake/config.py: defaults, the TOML file, LOGLAKE_* overrides, and how errors are reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loglake.core.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so ./loglake.toml of the repository is not picked up."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("LOGLAKE_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- sources -------------------------------------------------------------------------


def test_defaults_load_with_no_file() -> None:
    cfg = load_config(environ={})
    assert cfg == Config()
    assert cfg.kafka.topic == "loglake.logs"
    assert cfg.query.port == 8080
    assert cfg.broker.embedded is True
    assert cfg.storage.data_root == "./var/data"


def test_defaults_match_the_shipped_loglake_toml() -> None:
    shipped = load_config(REPO / "loglake.toml", environ={})
    assert shipped.model_dump(exclude={"shipper": {"host"}}) == Config().model_dump(exclude={"shipper": {"host"}})


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "my.toml", """
[kafka]
topic = "team.logs"
partitions = 12

[shipper]
include = ["/var/log/*.log", "/srv/app/*.log"]
start_at = "end"

[query]
port = 9000
memory_limit = "512MB"
""")
    cfg = load_config(path, environ={})
    assert cfg.kafka.topic == "team.logs" and cfg.kafka.partitions == 12
    assert cfg.shipper.include == ["/var/log/*.log", "/srv/app/*.log"]
    assert cfg.shipper.start_at == "end"
    assert cfg.query.port == 9000 and cfg.query.memory_limit == "512MB"
    assert cfg.ingest == Config().ingest                      # untouched sections keep defaults


def test_loglake_toml_in_the_working_directory_is_read_by_default(tmp_path: Path) -> None:
    write(tmp_path / "loglake.toml", "[query]\nport = 9123\n")
    assert load_config(environ={}).query.port == 9123


def test_loglake_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.toml", "[query]\nport = 9124\n")
    assert load_config(environ={"LOGLAKE_CONFIG": str(path)}).query.port == 9124


def test_reads_os_environ_when_no_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGLAKE_QUERY__PORT", "9125")
    assert load_config().query.port == 9125


# -- environment overrides -------------------------------------------------------------------


def test_env_overrides_the_file_with_an_int(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[query]\nport = 9000\nhost = \"0.0.0.0\"\n")
    cfg = load_config(path, environ={"LOGLAKE_QUERY__PORT": "9001"})
    assert cfg.query.port == 9001
    assert cfg.query.host == "0.0.0.0"                         # the rest of the section stays


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("true", True)])
def test_env_bool(raw: str, value: bool) -> None:
    cfg = load_config(environ={"LOGLAKE_BROKER__EMBEDDED": raw, "LOGLAKE_LOG__JSON_FORMAT": raw})
    assert cfg.broker.embedded is value and cfg.log.json_format is value


def test_env_list(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", '[shipper]\ninclude = ["x"]\n')
    cfg = load_config(path, environ={"LOGLAKE_SHIPPER__INCLUDE": '["a/*.log", "b/**/*.log"]',
                                     "LOGLAKE_SHIPPER__EXCLUDE": "[]"})
    assert cfg.shipper.include == ["a/*.log", "b/**/*.log"]
    assert cfg.shipper.exclude == []


def test_env_float() -> None:
    assert load_config(environ={"LOGLAKE_INGEST__FLUSH_INTERVAL_S": "0.5"}).ingest.flush_interval_s == 0.5


@pytest.mark.parametrize(("name", "raw", "attr"), [
    ("LOGLAKE_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092", ("kafka", "bootstrap_servers")),
    ("LOGLAKE_QUERY__MEMORY_LIMIT", "4GB", ("query", "memory_limit")),
    ("LOGLAKE_STORAGE__CATALOG_URL", "sqlite:////data/c.sqlite", ("storage", "catalog_url")),
    ("LOGLAKE_SHIPPER__TENANT", "team-a", ("shipper", "tenant")),
    ("LOGLAKE_QUERY__HOST", '"quoted.example"', ("query", "host")),
])
def test_env_plain_strings(name: str, raw: str, attr: tuple[str, str]) -> None:
    cfg = load_config(environ={name: raw})
    expected = raw.strip('"')
    assert getattr(getattr(cfg, attr[0]), attr[1]) == expected


def test_env_path_value() -> None:
    assert load_config(environ={"LOGLAKE_STORAGE__DATA_ROOT": "/srv/loglake"}).storage.data_root == "/srv/loglake"


def test_env_variable_names_are_case_insensitive_after_the_prefix() -> None:
    assert load_config(environ={"LOGLAKE_query__Port": "9002"}).query.port == 9002


def test_unrelated_variables_are_ignored() -> None:
    assert load_config(environ={"LOGLAKEX_QUERY__PORT": "1", "PATH": "/bin", "QUERY__PORT": "2"}) == Config()


@pytest.mark.parametrize(("name", "raw", "attr"), [
    ("LOGLAKE_SHIPPER__TENANT", "42", ("shipper", "tenant")),
    ("LOGLAKE_SHIPPER__SERVICE", "2024", ("shipper", "service")),
])
def test_env_numeric_looking_value_for_a_string_key_stays_a_string(name: str, raw: str,
                                                                   attr: tuple[str, str]) -> None:
    cfg = load_config(environ={name: raw})
    assert getattr(getattr(cfg, attr[0]), attr[1]) == raw


def test_env_entry_of_a_text_table_stays_a_string() -> None:
    assert load_config(environ={"LOGLAKE_SHIPPER__LABELS__TEAM": "42"}).shipper.labels == {"team": "42"}


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "raw", "key"), [
    ("LOGLAKE_QUERY__PORT", "not-a-port", "query.port"),
    ("LOGLAKE_QUERY__PORT", "70000", "query.port"),
    ("LOGLAKE_KAFKA__PARTITIONS", "0", "kafka.partitions"),
    ("LOGLAKE_SHIPPER__START_AT", "middle", "shipper.start_at"),
    ("LOGLAKE_BROKER__EMBEDDED", "sometimes", "broker.embedded"),
    ("LOGLAKE_LOG__LEVEL", "loud", "log.level"),
])
def test_bad_env_value_names_the_key_and_the_variable(name: str, raw: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={name: raw})
    assert key in str(e.value)
    assert name in str(e.value)


def test_bad_file_value_names_the_key_the_variable_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[storage]\nzstd_level = 99\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    msg = str(e.value)
    assert "storage.zstd_level" in msg and "LOGLAKE_STORAGE__ZSTD_LEVEL" in msg and str(path) in msg


def test_bad_kafka_topic_names_the_topic_key_and_its_variable() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={"LOGLAKE_KAFKA__TOPIC": "bad topic!"})
    assert "kafka.topic" in str(e.value)
    assert "LOGLAKE_KAFKA__TOPIC" in str(e.value)


def test_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[query]\nprot = 9000\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert "query.prot" in str(e.value) and "LOGLAKE_QUERY__PROT" in str(e.value)
    assert "unknown key" in str(e.value)


@pytest.mark.parametrize(("name", "key"), [
    ("LOGLAKE_QUERY__PROT", "query.prot"),
    ("LOGLAKE_NOSECTION__KEY", "nosection"),
    ("LOGLAKE_TOPLEVEL", "toplevel"),
])
def test_unknown_env_key_is_an_error(name: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={name: "1"})
    assert key in str(e.value) and "unknown key" in str(e.value)


def test_several_bad_keys_are_all_reported() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={"LOGLAKE_QUERY__PORT": "x", "LOGLAKE_INGEST__FLUSH_ROWS": "0"})
    assert "query.port" in str(e.value) and "ingest.flush_rows" in str(e.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_missing_file_named_by_loglake_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(environ={"LOGLAKE_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize("text", ["[query\nport = 1\n", "port = = 1\n", "[a]\nx = 1\n[a]\nx = 2\n"])
def test_invalid_toml_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'[query]\nhost = "\xff\xfe"\n')
    with pytest.raises(ConfigError):
        load_config(path, environ={})


# -- the command line ---------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}


def test_cli_exits_2_and_names_the_key_on_a_bad_config(tmp_path: Path) -> None:
    write(tmp_path / "bad.toml", "[query]\nport = \"eighty\"\n")
    proc = subprocess.run([PYTHON, "-m", "loglake", "--config", "bad.toml", "serve"],
                          cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "query.port" in proc.stderr
    assert "LOGLAKE_QUERY__PORT" in proc.stderr


def test_cli_exits_2_on_a_missing_config_file(tmp_path: Path) -> None:
    proc = subprocess.run([PYTHON, "-m", "loglake", "--config", "absent.toml", "serve"],
                          cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "absent.toml" in proc.stderr


# -- ingest: topics, formats, zones ---------------------------------------------

def test_ingest_topics_and_formats_from_the_file(tmp_path: Path) -> None:
    f = tmp_path / "loglake.toml"
    f.write_text("""
[ingest]
default_timezone = "Europe/Berlin"
[[ingest.topics]]
name = "vector-logs"
tenant = "team-a"
[[ingest.formats]]
service = "billing*"
format = "pattern"
pattern = '^(?P<level>[A-Z]+) (?P<user>\\w+): (?P<message>.*)$'
[[ingest.formats]]
topic = "vector-logs"
format = "json"
""")
    cfg = load_config(f, environ={})
    assert cfg.ingest.default_timezone == "Europe/Berlin"
    assert [(t.name, t.tenant, t.service) for t in cfg.ingest.topics] == [("vector-logs", "team-a", "unknown")]
    assert [r.format for r in cfg.ingest.formats] == ["pattern", "json"]
    assert cfg.ingest.patterns() == (r"^(?P<level>[A-Z]+) (?P<user>\w+): (?P<message>.*)$",)


@pytest.mark.parametrize(("env", "key", "reason"), [
    ({"LOGLAKE_INGEST__DEFAULT_TIMEZONE": "Mars/Olympus"}, "ingest.default_timezone", "unknown time zone"),
    ({"LOGLAKE_INGEST__FORMATS": '[{format="pattern", pattern="(a)"}]'}, "ingest.formats.0", "named group"),
    ({"LOGLAKE_INGEST__FORMATS": '[{format="pattern", pattern="(?P<a>x)(y)"}]'}, "ingest.formats.0",
     "every group must be named"),
    ({"LOGLAKE_INGEST__FORMATS": '[{format="pattern", pattern="(?P<a>"}]'}, "ingest.formats.0", "invalid pattern"),
    ({"LOGLAKE_INGEST__FORMATS": '[{format="json", pattern="(?P<a>x)"}]'}, "ingest.formats.0", "only used with"),
    ({"LOGLAKE_INGEST__FORMATS": '[{format="yaml"}]'}, "ingest.formats.0.format", "Input should be"),
    ({"LOGLAKE_INGEST__TOPICS": '[{name="bad topic"}]'}, "ingest.topics.0.name", "topic name"),
    ({"LOGLAKE_INGEST__ON_TOPIC_RECREATED": "ignore"}, "ingest.on_topic_recreated", "Input should be"),
    # Tenants become directory names: refused at load, not line by line into dead letters (issue 19).
    ({"LOGLAKE_INGEST__DEFAULT_TENANT": "../x"}, "ingest.default_tenant", "invalid tenant name"),
    ({"LOGLAKE_INGEST__TOPICS": '[{name="edge", tenant="a/b"}]'}, "ingest.topics.0.tenant", "invalid tenant name"),
])
def test_bad_ingest_settings_name_the_key(env: dict[str, str], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ=env)
    assert key in str(e.value)
    assert reason in str(e.value)


def test_a_pattern_python_accepts_but_re2_rejects_stops_ingest_with_exit_2(tmp_path: Path) -> None:
    # Look-behind is valid Python regex but not RE2: caught when the worker builds its statement.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAKE_")}
    env["LOGLAKE_INGEST__FORMATS"] = '[{format="pattern", pattern="(?<=x)(?P<level>y)"}]'
    env["LOGLAKE_STORAGE__DATA_ROOT"] = str(tmp_path / "data")
    proc = subprocess.run([sys.executable, "-m", "loglake", "ingest"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "ingest.formats" in proc.stderr and "RE2" in proc.stderr


@pytest.mark.parametrize(("workers", "partitions", "cores", "expected"), [
    (0, 3, 2, 2),       # one per core
    (0, 3, 8, 3),       # never more than the partitions: the rest would sit idle
    (0, 1, 8, 1),
    (0, 12, 1, 1),
    (4, 3, 1, 4),       # said outright: as said
])
def test_ingest_worker_count(workers: int, partitions: int, cores: int, expected: int) -> None:
    cfg = Config.model_validate({"ingest": {"workers": workers}})
    assert cfg.ingest.worker_count(partitions, cores) == expected
