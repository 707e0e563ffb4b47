"""Generate docs/plugins/*.md from the plugins' own documentation (ansible-doc --json).

    python docs/generate.py           write the pages
    python docs/generate.py --check   fail when a page differs from what the docs say now

The pages are generated, never edited by hand: the source of truth is each plugin's
DOCUMENTATION / EXAMPLES / RETURN and each role's meta/argument_specs.yml.
"""

import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "plugins")
COLLECTION = "lockstep.virt"
PLUGIN_DIRS = {"module": "modules", "connection": "connection", "inventory": "inventory"}


def plugin_names(kind):
    path = os.path.join(REPO, "plugins", PLUGIN_DIRS[kind])
    if not os.path.isdir(path):
        return []
    return sorted(f[:-3] for f in os.listdir(path) if f.endswith(".py") and not f.startswith("_"))


def role_names():
    path = os.path.join(REPO, "roles")
    if not os.path.isdir(path):
        return []
    return sorted(d for d in os.listdir(path) if os.path.exists(os.path.join(path, d, "meta", "argument_specs.yml")))


def ansible_doc(kind, names):
    fqcns = ["{}.{}".format(COLLECTION, n) for n in names]
    res = subprocess.run(
        ["ansible-doc", "--json", "-t", kind] + fqcns, capture_output=True, text=True, check=False, cwd=REPO
    )
    if res.returncode != 0:
        raise SystemExit("ansible-doc failed for {}: {}".format(", ".join(fqcns), res.stderr.strip()))
    return json.loads(res.stdout)


MARKUP = (
    (re.compile(r"[OCVE]\(([^)]*)\)"), r"`\1`"),  # option, code, value, environment
    (re.compile(r"M\(([^)]*)\)"), r"`\1`"),  # module
    (re.compile(r"I\(([^)]*)\)"), r"*\1*"),
    (re.compile(r"L\(([^,)]*),\s*([^)]*)\)"), r"[\1](\2)"),
    (re.compile(r"U\(([^)]*)\)"), r"<\1>"),
)


def text(value):
    """One table-safe Markdown line from Ansible's documentation markup."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(text(v) for v in value)
    out = str(value).replace("\n", " ").strip()
    for pattern, repl in MARKUP:
        out = pattern.sub(repl, out)
    return out.replace("|", "\\|")


def option_rows(options, depth=0):
    rows = []
    for name in sorted(options):
        opt = options[name]
        kind = opt.get("type", "str")
        if kind == "list" and opt.get("elements"):
            kind = "list / {}".format(opt["elements"])
        extra = []
        if opt.get("required"):
            extra.append("**required**")
        if opt.get("choices"):
            extra.append("choices: " + ", ".join("`{}`".format(c) for c in opt["choices"]))
        if "default" in opt and opt["default"] is not None:
            extra.append("default: `{}`".format(json.dumps(opt["default"])))
        if opt.get("aliases"):
            extra.append("aliases: " + ", ".join(opt["aliases"]))
        label = "{}`{}`".format("&nbsp;&nbsp;" * depth + ("↳ " if depth else ""), name)
        rows.append("| {} | {} | {} {} |".format(label, kind, text(opt.get("description")), "; ".join(extra)).rstrip())
        sub = opt.get("suboptions") or opt.get("options")
        if sub:
            rows += option_rows(sub, depth + 1)
    return rows


def return_rows(values, depth=0):
    rows = []
    for name in sorted(values or {}):
        val = values[name]
        label = "{}`{}`".format("&nbsp;&nbsp;" * depth + ("↳ " if depth else ""), name)
        rows.append(
            "| {} | {} | {} | {} |".format(
                label, val.get("type", ""), text(val.get("returned")), text(val.get("description"))
            )
        )
        if val.get("contains"):
            rows += return_rows(val["contains"], depth + 1)
    return rows


def plugin_page(kind, name, data):
    doc = data.get("doc", {})
    lines = [
        "# {}.{}".format(COLLECTION, name),
        "",
        "*{} plugin* — {}".format(kind, text(doc.get("short_description"))),
        "",
    ]
    lines += ["> Generated from the plugin's documentation by `docs/generate.py`; do not edit.", ""]
    for para in doc.get("description") or []:
        lines += [text(para), ""]
    if doc.get("requirements"):
        lines += ["## Requirements", ""] + ["- {}".format(text(r)) for r in doc["requirements"]] + [""]
    if doc.get("options"):
        lines += ["## Options", "", "| option | type | description |", "| --- | --- | --- |"]
        lines += option_rows(doc["options"]) + [""]
    if doc.get("attributes"):
        lines += ["## Attributes", "", "| attribute | support | description |", "| --- | --- | --- |"]
        for aname in sorted(doc["attributes"]):
            attr = doc["attributes"][aname]
            lines.append("| {} | {} | {} |".format(aname, text(attr.get("support")), text(attr.get("description"))))
        lines.append("")
    if doc.get("notes"):
        lines += ["## Notes", ""] + ["- {}".format(text(n)) for n in doc["notes"]] + [""]
    if data.get("examples"):
        lines += ["## Examples", "", "```yaml", data["examples"].strip("\n"), "```", ""]
    if data.get("return"):
        lines += ["## Return values", "", "| key | type | returned | description |", "| --- | --- | --- | --- |"]
        lines += return_rows(data["return"]) + [""]
    if doc.get("seealso"):
        lines += ["## See also", ""]
        for ref in doc["seealso"]:
            lines.append("- {}".format(text(ref.get("module") or ref.get("name") or ref.get("link"))))
        lines.append("")
    return "\n".join(lines)


def role_page(name, data):
    lines = ["# {}.{} (role)".format(COLLECTION, name), ""]
    lines += ["> Generated from the role's meta/argument_specs.yml by `docs/generate.py`; do not edit.", ""]
    for entry, spec in sorted((data.get("entry_points") or {}).items()):
        lines += ["## Entry point `{}`".format(entry), "", text(spec.get("short_description")), ""]
        for para in spec.get("description") or []:
            lines += [text(para), ""]
        if spec.get("options"):
            lines += ["| option | type | description |", "| --- | --- | --- |"]
            lines += option_rows(spec["options"]) + [""]
    return "\n".join(lines)


def render():
    pages = {}
    index = ["# lockstep.virt plugin and role reference", "", "Generated by `docs/generate.py`.", ""]
    for kind in ("module", "connection", "inventory"):
        names = plugin_names(kind)
        if not names:
            continue
        docs = ansible_doc(kind, names)
        index += [
            "## {}".format(
                {"module": "Modules", "connection": "Connection plugins", "inventory": "Inventory plugins"}[kind]
            ),
            "",
        ]
        for name in names:
            data = docs["{}.{}".format(COLLECTION, name)]
            filename = "{}_{}.md".format(name, kind) if kind != "module" else "{}.md".format(name)
            pages[filename] = plugin_page(kind, name, data)
            index.append(
                "- [{}.{}]({}) — {}".format(COLLECTION, name, filename, text(data["doc"].get("short_description")))
            )
        index.append("")
    roles = role_names()
    if roles:
        docs = ansible_doc("role", roles)
        index += ["## Roles", ""]
        for name in roles:
            filename = "{}_role.md".format(name)
            pages[filename] = role_page(name, docs["{}.{}".format(COLLECTION, name)])
            index.append("- [{}.{}]({})".format(COLLECTION, name, filename))
        index.append("")
    pages["README.md"] = "\n".join(index)
    return pages


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    pages = render()
    if args.check:
        stale = []
        for filename, content in pages.items():
            path = os.path.join(OUT, filename)
            if not os.path.exists(path) or open(path).read() != content:
                stale.append(filename)
        existing = set(os.listdir(OUT)) if os.path.isdir(OUT) else set()
        stale += sorted(existing - set(pages))
        if stale:
            print("docs out of date (run `make docs`): " + ", ".join(sorted(stale)), file=sys.stderr)
            return 1
        print("docs up to date ({} pages)".format(len(pages)))
        return 0
    os.makedirs(OUT, exist_ok=True)
    for filename in set(os.listdir(OUT)) - set(pages):
        os.unlink(os.path.join(OUT, filename))
    for filename, content in pages.items():
        with open(os.path.join(OUT, filename), "w") as fh:
            fh.write(content)
    print("wrote {} pages to {}".format(len(pages), os.path.relpath(OUT, REPO)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
