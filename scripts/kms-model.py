#!/usr/bin/env python3
"""Generates src/api/kms-model.json, the request constraints of the AWS KMS service model.

The table is what `src/api/validate.rs` checks every request body against before the
operation sees it (AWS's `ValidationException`s). It holds, for every operation's input
shape, each member reachable from it: its wire name, whether it is required, its type and
the model's constraints (length, range, pattern, enum, sensitive). Documentation and output
shapes are left out.

Usage:
    scripts/kms-model.py SERVICE-2.JSON [SOURCE] > src/api/kms-model.json

SERVICE-2.JSON is botocore's botocore/data/kms/2014-11-01/service-2.json; SOURCE (e.g.
"botocore <commit>") is recorded in the table. The output is deterministic (sorted keys), so
re-running it on the same model reproduces the checked-in file byte for byte.
"""

import json
import sys

SCALAR_KEYS = ("min", "max", "pattern", "enum", "sensitive")


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        model = json.load(f)
    source = sys.argv[2] if len(sys.argv) == 3 else "botocore"
    shapes = model["shapes"]
    out_shapes = {}

    def walk(name: str) -> None:
        if name in out_shapes:
            return
        s = shapes[name]
        t = s["type"]
        entry = {"type": t}
        out_shapes[name] = entry
        for k in SCALAR_KEYS:
            if k in s:
                entry[k] = s[k]
        if t == "structure":
            required = set(s.get("required", []))
            entry["members"] = [
                {"name": m, "shape": v["shape"], "required": m in required}
                for m, v in s["members"].items()
            ]
            for v in s["members"].values():
                walk(v["shape"])
        elif t == "list":
            entry["member"] = s["member"]["shape"]
            walk(s["member"]["shape"])
        elif t == "map":
            entry["key"] = s["key"]["shape"]
            entry["value"] = s["value"]["shape"]
            walk(s["key"]["shape"])
            walk(s["value"]["shape"])
        elif t not in ("string", "blob", "integer", "long", "boolean", "timestamp"):
            sys.exit(f"shape {name}: type {t} is not handled by src/api/validate.rs")

    operations = {}
    for op, o in sorted(model["operations"].items()):
        if "input" in o:
            operations[op] = o["input"]["shape"]
            walk(o["input"]["shape"])
    table = {
        "source": source,
        "apiVersion": model["metadata"]["apiVersion"],
        "operations": operations,
        "shapes": out_shapes,
    }
    json.dump(table, sys.stdout, indent=1, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
