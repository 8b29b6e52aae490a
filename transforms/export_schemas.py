"""Export the event contracts as JSON Schema, one file per topic, for producers in other languages.

    python -m transforms.export_schemas            # (re)write schemas/<topic>.schema.json
    python -m transforms.export_schemas --check    # exit 1 if a file is missing or stale

tests/unit/test_schemas.py runs the check, so a model change without a re-export fails the unit suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

from events.topics import CONTRACTS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_ID_BASE = "https://iheardai.example/schemas/"


def render_schemas() -> Dict[str, str]:
    """{file name: JSON text} for every topic's contract (deterministic: sorted keys, trailing newline)."""
    out = {}
    for topic, model in sorted(CONTRACTS.items()):
        schema = model.model_json_schema(mode="validation")
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{_ID_BASE}{topic}.json",
                  "x-topic": topic, "x-schema-version": model.SCHEMA_VERSION, **schema}
        out[f"{topic}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale_files(directory: Path = SCHEMA_DIR) -> list:
    """Names of schema files that are missing, different from the models, or no longer produced."""
    wanted = render_schemas()
    stale = [name for name, text in wanted.items()
             if not (directory / name).exists() or (directory / name).read_text() != text]
    stale += sorted(p.name for p in directory.glob("*.schema.json") if p.name not in wanted)
    return stale


def write_schemas(directory: Path = SCHEMA_DIR) -> list:
    directory.mkdir(parents=True, exist_ok=True)
    for p in directory.glob("*.schema.json"):
        p.unlink()
    wanted = render_schemas()
    for name, text in wanted.items():
        (directory / name).write_text(text)
    return sorted(wanted)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that schemas/ is up to date")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale JSON schemas (run python -m transforms.export_schemas): {', '.join(stale)}")
            return 1
        print("schemas/ is up to date")
        return 0
    for name in write_schemas():
        print(f"wrote schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
