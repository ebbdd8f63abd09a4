"""The README is the front door: its configuration and API tables must match the code."""

import dataclasses
import re
from pathlib import Path

from broker.config import Settings
from broker.handlers import APIS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        assert f"`{flag}" in README, f"{flag} is missing from the README's configuration table"
        assert f"KEEL_{f.name.upper()}" in README


def test_api_table_matches_what_apiversions_advertises() -> None:
    rows = {int(m.group(2)): (m.group(1), m.group(3))
            for m in re.finditer(r"^\| (\w+) \| (\d+) \| ([0-9–]+) \|", README, re.M)}
    assert set(rows) == set(APIS), "README API table and served APIs differ"
    for key, api in APIS.items():
        low, high = api.advertised_range
        name, versions = rows[key]
        assert name == api.name
        assert versions == (f"{low}–{high}" if low != high else str(low)), f"{api.name}: README says {versions}"
