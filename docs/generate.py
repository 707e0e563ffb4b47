"""Generate docs/plugins/*.md from the plugins' own documentation, and docs/docsite/rst/ from the guides.

    python docs/generate.py           write the pages
    python docs/generate.py --check   fail when a page differs from what the docs say now

The pages are generated, never edited by hand: the source of truth is each plugin's
DOCUMENTATION / EXAMPLES / RETURN and each role's meta/argument_specs.yml.

The documentation is read by ansible-core (`ansible-doc --metadata-dump`, the same data
antsibull-docs builds the Ansible docsite from) and its markup - C(), O(), V(), RV(), M(), P(),
E(), L(), U(), I(), B(), HORIZONTALLINE - is parsed and rendered to Markdown by
antsibull-docs-parser, the ecosystem's parser. Options and return values have anchors, so
O(...) and RV(...) link to them, across pages too; references to other collections link to
the Ansible documentation. Markup the parser cannot read fails the run.

The guides (docs/guides/*.md) are converted to reStructuredText in docs/docsite/rst/ (see
guides_rst.py), the form antsibull-docs ships as the collection's extra documentation; each must be
listed in docs/docsite/extra-docs.yml.
"""

import argparse
import json
import os
import subprocess
import sys

import yaml
from antsibull_docs_parser import dom
from antsibull_docs_parser.format import LinkProvider
from antsibull_docs_parser.md import md_escape, to_md
from antsibull_docs_parser.parser import Context, Whitespace, parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import guides_rst  # noqa: E402

REPO = os.path.dirname(HERE)
OUT = os.path.join(HERE, "plugins")
GUIDES = os.path.join(HERE, "guides")
RST_OUT = os.path.join(HERE, "docsite", "rst")
EXTRA_DOCS = os.path.join(HERE, "docsite", "extra-docs.yml")
NAMESPACE, NAME = "lockstep", "virt"
COLLECTION = "{}.{}".format(NAMESPACE, NAME)
KINDS = (("module", "Modules"), ("connection", "Connection plugins"), ("inventory", "Inventory plugins"))
DOCSITE = "https://docs.ansible.com/ansible/latest/collections"
NOTICE = "> Generated from the {} by `docs/generate.py` (antsibull-docs-parser); do not edit."


def page_name(fqcn, kind):
    name = fqcn.split(".", 2)[2]
    if kind == "module":
        return "{}.md".format(name)
    return "{}_{}.md".format(name, kind)


def anchor(what, name, entrypoint=None):
    """The HTML id of an option or return value: option-spec--disks--size, return-leases--held."""
    prefix = "{}-{}".format(what, entrypoint) if entrypoint else what
    return "{}-{}".format(prefix, "--".join(name))


class Links(LinkProvider):
    """Links within these pages for this collection, the Ansible docsite for other collections."""

    def plugin_link(self, plugin):
        if plugin.fqcn.startswith(COLLECTION + "."):
            return page_name(plugin.fqcn, plugin.type)
        namespace, coll, name = plugin.fqcn.split(".", 2)
        if plugin.type == "module":
            return "{}/{}/{}/{}_module.html".format(DOCSITE, namespace, coll, name)
        return "{}/{}/{}/{}_{}.html".format(DOCSITE, namespace, coll, name, plugin.type)

    def plugin_option_like_link(self, plugin, entrypoint, what, name, current_plugin):
        ref = anchor("option" if what == "option" else "return", name, entrypoint)
        if current_plugin:
            return "#" + ref
        if plugin.fqcn.startswith(COLLECTION + "."):
            return "{}#{}".format(page_name(plugin.fqcn, plugin.type), ref)
        return None


LINKS = Links()


class MarkupError(Exception):
    pass


def text(value, plugin=None, entrypoint=None, sep=" "):
    """Ansible markup (a string or a list of paragraphs) as Markdown on one table-safe line."""
    if value is None:
        return ""
    if not isinstance(value, (list, tuple)):
        value = [value]
    value = [str(v) for v in value]
    context = Context(current_plugin=plugin, role_entrypoint=entrypoint)
    try:
        paragraphs = parse(value, context, errors="exception", whitespace=Whitespace.STRIP)
    except Exception as exc:  # the parser's errors name the markup that failed
        raise MarkupError("{}: {}".format(plugin.fqcn if plugin else COLLECTION, exc)) from exc
    out = to_md(paragraphs, link_provider=LINKS, current_plugin=plugin, par_sep=sep)
    return out.replace("\n", " ").strip()


def code(value):
    return "<code>{}</code>".format(md_escape(value))


def option_rows(options, plugin, entrypoint=None, path=(), depth=0):
    rows = []
    for name in sorted(options or {}):
        opt = options[name]
        here = path + (name,)
        kind = opt.get("type", "str")
        if kind == "list" and opt.get("elements"):
            kind = "list / {}".format(opt["elements"])
        extra = []
        if opt.get("required"):
            extra.append("**required**")
        if opt.get("choices"):
            choices = opt["choices"]
            extra.append("choices: " + ", ".join(code(str(c)) for c in choices))
        if "default" in opt and opt["default"] is not None:
            extra.append("default: " + code(json.dumps(opt["default"])))
        if opt.get("aliases"):
            extra.append("aliases: " + ", ".join(code(a) for a in opt["aliases"]))
        if opt.get("version_added") and opt.get("version_added_collection", COLLECTION) == COLLECTION:
            extra.append("added in {}".format(opt["version_added"]))
        label = '{}<a id="{}"></a>`{}`'.format(
            "&nbsp;&nbsp;" * depth + ("↳ " if depth else ""), anchor("option", here, entrypoint), name
        )
        description = text(opt.get("description"), plugin, entrypoint)
        rows.append("| {} | {} | {} {} |".format(label, kind, description, "; ".join(extra)).rstrip())
        sub = opt.get("suboptions") or opt.get("options")
        if sub:
            rows += option_rows(sub, plugin, entrypoint, here, depth + 1)
    return rows


def return_rows(values, plugin, path=(), depth=0):
    rows = []
    for name in sorted(values or {}):
        val = values[name]
        here = path + (name,)
        label = '{}<a id="{}"></a>`{}`'.format(
            "&nbsp;&nbsp;" * depth + ("↳ " if depth else ""), anchor("return", here), name
        )
        description = text(val.get("description"), plugin)
        if val.get("version_added") and val.get("version_added_collection", COLLECTION) == COLLECTION:
            description += " (added in {})".format(val["version_added"])
        rows.append(
            "| {} | {} | {} | {} |".format(label, val.get("type", ""), text(val.get("returned"), plugin), description)
        )
        if val.get("contains"):
            rows += return_rows(val["contains"], plugin, here, depth + 1)
    return rows


def seealso_line(ref, plugin):
    if ref.get("module"):
        target = dom.PluginIdentifier(fqcn=ref["module"], type="module")
        line = "[{}]({})".format(md_escape(ref["module"]), LINKS.plugin_link(target))
    elif ref.get("plugin"):
        target = dom.PluginIdentifier(fqcn=ref["plugin"], type=ref["plugin_type"])
        line = "[{}]({})".format(md_escape(ref["plugin"]), LINKS.plugin_link(target))
    elif ref.get("link"):
        line = "[{}]({})".format(md_escape(ref.get("name") or ref["link"]), ref["link"])
    else:
        line = md_escape(ref.get("name") or ref.get("ref") or "")
    if ref.get("description"):
        line += " - " + text(ref["description"], plugin)
    return "- " + line


def plugin_page(kind, fqcn, data):
    doc = data.get("doc", {})
    plugin = dom.PluginIdentifier(fqcn=fqcn, type=kind)
    lines = ["# {}".format(fqcn), "", "*{} plugin* — {}".format(kind, text(doc.get("short_description"), plugin)), ""]
    lines += [NOTICE.format("plugin's documentation"), ""]
    if doc.get("version_added"):
        lines += ["Added in version {} of {}.".format(doc["version_added"], COLLECTION), ""]
    for para in doc.get("description") or []:
        lines += [text(para, plugin), ""]
    if doc.get("requirements"):
        lines += ["## Requirements", ""] + ["- {}".format(text(r, plugin)) for r in doc["requirements"]] + [""]
    if doc.get("options"):
        lines += ["## Options", "", "| option | type | description |", "| --- | --- | --- |"]
        lines += option_rows(doc["options"], plugin) + [""]
    if doc.get("attributes"):
        lines += ["## Attributes", "", "| attribute | support | description |", "| --- | --- | --- |"]
        for aname in sorted(doc["attributes"]):
            attr = doc["attributes"][aname]
            description = text(attr.get("description"), plugin)
            if attr.get("details"):
                description += " " + text(attr["details"], plugin)
            lines.append("| {} | {} | {} |".format(aname, md_escape(str(attr.get("support", ""))), description))
        lines.append("")
    if doc.get("notes"):
        lines += ["## Notes", ""] + ["- {}".format(text(n, plugin)) for n in doc["notes"]] + [""]
    if data.get("examples"):
        lines += ["## Examples", "", "```yaml", data["examples"].strip("\n"), "```", ""]
    if data.get("return"):
        lines += ["## Return values", "", "| key | type | returned | description |", "| --- | --- | --- | --- |"]
        lines += return_rows(data["return"], plugin) + [""]
    if doc.get("seealso"):
        lines += ["## See also", ""] + [seealso_line(ref, plugin) for ref in doc["seealso"]] + [""]
    return "\n".join(lines)


def role_page(fqcn, data):
    plugin = dom.PluginIdentifier(fqcn=fqcn, type="role")
    lines = ["# {} (role)".format(fqcn), "", NOTICE.format("role's meta/argument_specs.yml"), ""]
    for entry, spec in sorted((data.get("entry_points") or {}).items()):
        lines += ["## Entry point `{}`".format(entry), "", text(spec.get("short_description"), plugin, entry), ""]
        for para in spec.get("description") or []:
            lines += [text(para, plugin, entry), ""]
        if spec.get("options"):
            lines += ["| option | type | description |", "| --- | --- | --- |"]
            lines += option_rows(spec["options"], plugin, entry) + [""]
    return "\n".join(lines)


def metadata():
    env = dict(os.environ)
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(REPO, ".build", "collections"))
    res = subprocess.run(
        ["ansible-doc", "--metadata-dump", "--no-fail-on-errors", COLLECTION],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=env,
    )
    if res.returncode != 0:
        raise SystemExit("ansible-doc --metadata-dump failed: {}".format(res.stderr.strip()))
    dump = json.loads(res.stdout)["all"]
    errors = [
        "{} {}: {}".format(kind, name, entry["error"])
        for kind, entries in dump.items()
        for name, entry in entries.items()
        if isinstance(entry, dict) and entry.get("error")
    ]
    if errors:
        raise SystemExit("ansible-doc could not read:\n" + "\n".join(errors))
    return dump


def render():
    dump = metadata()
    pages = {}
    index = ["# {} plugin and role reference".format(COLLECTION), "", "Generated by `docs/generate.py`.", ""]
    for kind, title in KINDS:
        names = sorted(n for n in dump.get(kind, {}) if n.startswith(COLLECTION + "."))
        if not names:
            continue
        index += ["## {}".format(title), ""]
        for fqcn in names:
            data = dump[kind][fqcn]
            filename = page_name(fqcn, kind)
            pages[filename] = plugin_page(kind, fqcn, data)
            plugin = dom.PluginIdentifier(fqcn=fqcn, type=kind)
            short = text(data["doc"].get("short_description"), plugin)
            index.append("- [{}]({}) — {}".format(md_escape(fqcn), filename, short))
        index.append("")
    roles = sorted(n for n in dump.get("role", {}) if n.startswith(COLLECTION + "."))
    if roles:
        index += ["## Roles", ""]
        for fqcn in roles:
            filename = "{}_role.md".format(fqcn.split(".", 2)[2])
            pages[filename] = role_page(fqcn, dump["role"][fqcn])
            index.append("- [{}]({})".format(md_escape(fqcn), filename))
        index.append("")
    pages["README.md"] = "\n".join(index)
    return pages


def docsite_label(filename):
    """The antsibull-docs docsite label of a docs/plugins page: domain.md -> ...domain_module."""
    stem = filename[:-3]
    if stem.endswith(("_connection", "_inventory", "_role")):
        return "ansible_collections.{}.{}".format(COLLECTION, stem)
    return "ansible_collections.{}.{}_module".format(COLLECTION, stem)


def render_guides(plugin_pages):
    """docs/docsite/rst/guide_*.rst from docs/guides/*.md; every guide listed in extra-docs.yml."""
    labels = {name: docsite_label(name) for name in plugin_pages if name != "README.md"}
    pages = {}
    for name in sorted(os.listdir(GUIDES)):
        if name.endswith(".md"):
            with open(os.path.join(GUIDES, name)) as fh:
                pages[guides_rst.guide_key(name) + ".rst"] = guides_rst.convert(name, fh.read(), labels)
    with open(EXTRA_DOCS) as fh:
        extra = yaml.safe_load(fh) or {}
    listed = set()
    for section in extra.get("sections") or []:
        for entry in section.get("toctree") or []:
            listed.add(entry["ref"] if isinstance(entry, dict) else entry)
    missing = sorted(set(p[:-4] for p in pages) - listed)
    if missing:
        raise MarkupError("docs/docsite/extra-docs.yml does not list: " + ", ".join(missing))
    return pages


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    try:
        plugin_pages = render()
        outputs = ((OUT, plugin_pages), (RST_OUT, render_guides(plugin_pages)))
    except (MarkupError, ValueError) as exc:
        print("documentation error: {}".format(exc), file=sys.stderr)
        return 1
    if args.check:
        stale = []
        for directory, pages in outputs:
            for filename, content in pages.items():
                path = os.path.join(directory, filename)
                if not os.path.exists(path) or open(path).read() != content:
                    stale.append(os.path.relpath(path, HERE))
            existing = set(os.listdir(directory)) if os.path.isdir(directory) else set()
            stale += [os.path.relpath(os.path.join(directory, f), HERE) for f in existing - set(pages)]
        if stale:
            print("docs out of date (run `make docs`): " + ", ".join(sorted(stale)), file=sys.stderr)
            return 1
        print("docs up to date ({} pages)".format(sum(len(pages) for _d, pages in outputs)))
        return 0
    for directory, pages in outputs:
        os.makedirs(directory, exist_ok=True)
        for filename in set(os.listdir(directory)) - set(pages):
            os.unlink(os.path.join(directory, filename))
        for filename, content in pages.items():
            with open(os.path.join(directory, filename), "w") as fh:
                fh.write(content)
        print("wrote {} pages to {}".format(len(pages), os.path.relpath(directory, REPO)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
