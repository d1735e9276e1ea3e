"""Validates TOML configs against mongo-adls's JSON Schema with the
`jsonschema` package: an implementation independent of the agent's own
config loader.

    python3 e2e/validate_schema.py SCHEMA.json CONFIG.toml...

Prints one line per file and exits 1 if any file does not validate.
"""
import json
import sys
import tomllib

import jsonschema


def main() -> int:
    with open(sys.argv[1]) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    failed = 0
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            config = tomllib.load(f)
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
        if errors:
            failed += 1
            for e in errors:
                where = ".".join(str(p) for p in e.absolute_path) or "(top)"
                print(f"{path}: invalid at {where}: {e.message[:300]}")
        else:
            print(f"{path}: valid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
