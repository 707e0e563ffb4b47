"""The guides in docs/guides/ (Markdown, the source) as reStructuredText for docs/docsite/rst/.

antsibull-docs builds a collection's extra documentation only from RST files in docs/docsite/rst,
listed in docs/docsite/extra-docs.yml. docs/generate.py writes those files from the Markdown guides
with this module (CommonMark and tables, parsed by markdown-it-py), so the guides ship in the
collection and in a docsite built from it, and are never edited twice.

Links between guides, to a guide's sections and to the plugin pages become :ref: references to the
docsite's labels (``ansible_collections.lockstep.virt.docsite.<guide>`` for a guide,
``ansible_collections.lockstep.virt.<plugin>_<type>`` for a plugin).
"""

import os
import re

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

COLLECTION = "lockstep.virt"
LABEL_PREFIX = "ansible_collections.{}.docsite.".format(COLLECTION)
HEADING_CHARS = {1: "=", 2: "=", 3: "-", 4: "~", 5: "^", 6: '"'}

# characters after which inline markup may start, and before which it may end (docutils' rules, ASCII)
_START_OK = set(" \t\n-:/'\"<([{")
_END_OK = set(" \t\n-.,:;!?\\/'\")]}>")


def guide_key(filename):
    """running-the-lab.md -> guide_running_the_lab (the RST file's name and its label's last part)"""
    return "guide_" + re.sub(r"[^a-z0-9]+", "_", os.path.splitext(os.path.basename(filename))[0].lower()).strip("_")


def guide_label(filename):
    return LABEL_PREFIX + guide_key(filename)


def slug(text):
    """A heading's anchor as GitHub makes it (the anchors the Markdown guides link to)."""
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def escape(text):
    return re.sub(r"([\\`*_|])", r"\\\1", text)


class Converter:
    def __init__(self, filename, plugin_labels):
        self.filename = filename
        self.key = guide_key(filename)
        self.plugin_labels = plugin_labels  # docs/plugins page name -> docsite label

    # ---- inline
    def inline(self, node):
        pieces = []
        for child in node.children:
            pieces.append(self.inline_piece(child))
        out = ""
        for kind, text in pieces:
            if kind == "markup":
                if out and out[-1] not in _START_OK:
                    out += "\\ "
            elif out.endswith("\0") and text and text[0] not in _END_OK:
                out = out[:-1] + "\\ "
            out = out.rstrip("\0") + text + ("\0" if kind == "markup" else "")
        return out.replace("\0", "")

    def inline_piece(self, node):
        kind = node.type
        if kind == "text":
            return "text", escape(node.content)
        if kind in ("softbreak", "hardbreak"):
            return "text", " "
        if kind == "code_inline":
            return "markup", "``{}``".format(node.content)
        if kind == "strong":
            return "markup", "**{}**".format(self.inline(node))
        if kind == "em":
            return "markup", "*{}*".format(self.inline(node))
        if kind == "link":
            return "markup", self.link(node)
        if kind == "html_inline":
            return "text", escape(node.content)
        if kind == "image":
            return "text", escape(node.attrs.get("alt") or "")
        raise ValueError("{}: inline {} is not converted".format(self.filename, kind))

    def link(self, node):
        href = node.attrs.get("href", "")
        text = "".join(c.content for c in node.walk() if c.type in ("text", "code_inline")).strip()
        target, _sep, fragment = href.partition("#")
        if re.match(r"^[a-z]+://", href):
            return "`{} <{}>`__".format(text.replace("`", "") or href, href)
        if not target and fragment:
            return ":ref:`{} <{}>`".format(text, LABEL_PREFIX + self.key + "." + fragment.replace("-", "_"))
        name = os.path.basename(target)
        if target.endswith(".md") and os.path.dirname(target) in ("", "."):
            label = LABEL_PREFIX + guide_key(name)
            if fragment:
                label += "." + fragment.replace("-", "_")
            return ":ref:`{} <{}>`".format(text, label)
        if target.endswith(".md") and name in self.plugin_labels:
            return ":ref:`{} <{}>`".format(text, self.plugin_labels[name])
        raise ValueError("{}: link to {} has no place in the docsite".format(self.filename, href))

    # ---- blocks
    def blocks(self, node, indent=""):
        out = []
        for child in node.children:
            out += self.block(child, indent)
        return out

    def block(self, node, indent):
        kind = node.type
        if kind == "heading":
            level = int(node.tag[1])
            title = self.inline(node.children[0])
            plain = "".join(c.content for c in node.children[0].walk() if c.type in ("text", "code_inline"))
            char = HEADING_CHARS[level]
            line = char * max(len(title), 3)
            label = LABEL_PREFIX + self.key
            if level > 1:
                label += "." + slug(plain).replace("-", "_")
            lines = [".. _{}:".format(label), ""]
            lines += [line, title, line, ""] if level == 1 else [title, line, ""]
            return lines
        if kind == "paragraph":
            return [indent + self.inline(node.children[0]), ""]
        if kind in ("bullet_list", "ordered_list"):
            lines = []
            for item in node.children:
                marker = "- " if kind == "bullet_list" else "#. "
                body = self.blocks(item, "")
                while body and body[-1] == "":
                    body.pop()
                first = True
                for line in body:
                    if first:
                        lines.append(indent + marker + line)
                        first = False
                    else:
                        lines.append((indent + " " * len(marker) + line) if line else "")
            return lines + [""]
        if kind in ("fence", "code_block"):
            language = (node.info or "").split()[0] if node.info else "text"
            lines = [indent + ".. code-block:: {}".format(language), ""]
            lines += [(indent + "  " + line) if line else "" for line in node.content.rstrip("\n").split("\n")]
            return lines + [""]
        if kind == "blockquote":
            return self.blocks(node, indent + "  ")
        if kind == "hr":
            return [indent + "----", ""]
        if kind == "table":
            return self.table(node, indent)
        if kind == "html_block":
            return [indent + ".. raw:: html", ""] + [indent + "  " + line for line in node.content.splitlines()] + [""]
        raise ValueError("{}: block {} is not converted".format(self.filename, kind))

    def table(self, node, indent):
        rows = []
        header_rows = 0
        for section in node.children:
            for row in section.children:
                rows.append([self.inline(cell.children[0]) if cell.children else "" for cell in row.children])
                if section.type == "thead":
                    header_rows += 1
        lines = [indent + ".. list-table::", indent + "  :header-rows: {}".format(header_rows), ""]
        for row in rows:
            for i, cell in enumerate(row):
                lines.append(indent + ("  * - " if i == 0 else "    - ") + cell)
        return lines + [""]

    def convert(self, text):
        md = MarkdownIt("commonmark").enable("table")
        tree = SyntaxTreeNode(md.parse(text))
        lines = [
            "..",
            "  Generated from docs/guides/{} by docs/generate.py; do not edit.".format(os.path.basename(self.filename)),
            "",
        ]
        lines += self.blocks(tree)
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(line.rstrip() for line in lines) + "\n"


def convert(filename, text, plugin_labels):
    return Converter(filename, plugin_labels).convert(text)
