"""docs/configuration.md is generated from the config model and must stay current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vfile.config import reference as config_doc
from vfile.config.reader import parse_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_config_field_has_help_and_nothing_else_does() -> None:
    fields = {(s.model, f.name) for s in config_doc.SECTIONS
              for f in dataclasses.fields(s.model)}
    assert fields == set(config_doc.HELP), (
        "vfile/config/reference.py HELP must describe exactly the config dataclass fields; "
        f"missing: {sorted(n for _, n in fields - set(config_doc.HELP))}, "
        f"stale: {sorted(n for _, n in set(config_doc.HELP) - fields)}")


def test_every_documented_key_is_accepted_with_its_example() -> None:
    # parse_config rejects unknown keys and bad values, so every key and example is real.
    config = parse_config(config_doc.example_toml(), source="example")
    (profile,) = config.profiles
    assert profile.quota is not None and profile.hook is not None
    assert config.mount.appliances and config.mount.state_dir


def test_committed_reference_is_current() -> None:
    assert DOC.read_text() == config_doc.render(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m vfile.config.reference > docs/configuration.md`")


def test_reference_shows_defaults_and_choices() -> None:
    text = config_doc.render()
    assert '| `deadline` | duration | `"2s"` |' in text
    assert "`closed`, `open`, `safe`" in text
    assert '| `max_size` | size | `"64MiB"` |' in text
