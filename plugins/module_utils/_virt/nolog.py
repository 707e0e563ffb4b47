# Copyright: lockstep.virt contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The secrets a module's options carry inside their values, found in the raw options before the module
logs its invocation (runner.LibvirtModule registers them as ``no_log_values``), so that neither the
managed host's journal or syslog nor the result, the diff or ``-vvv`` shows them.

What counts as a secret here (options that *are* secrets are ``no_log`` in their argument spec):

* in any text that is XML: the value of every ``passwd`` or ``password`` attribute (graphics consoles),
  the text of every ``<passwd>`` or ``<password>`` element and of every ``<cookie>`` (a network disk's
  cookies);
* in any text that is a URI: the password of its ``user:password@`` part (connection passwords, the URL a
  volume is imported from and its checksum file), also percent-decoded;
* in every ``cloud_init`` dictionary (``spec.cloud_init`` of a domain, also as an item of ``apply``):
  in its ``user_data``, ``meta_data`` and ``network_config`` - a dictionary, or YAML text - the values of
  ``password``, ``passwd``, ``hashed_passwd`` and ``plain_text_passwd`` at any depth (the default user's
  password, ``users``, ``chpasswd.users``) and the password of every ``user:password`` entry of a
  ``chpasswd`` ``list`` (text or list).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

try:
    import yaml

    HAS_YAML = True
except ImportError:  # the managed host may have no PyYAML: text is then read line by line
    yaml = None
    HAS_YAML = False

PASSWORD_KEYS = frozenset(("password", "passwd", "hashed_passwd", "plain_text_passwd"))
CLOUD_INIT_KEYS = ("user_data", "meta_data", "network_config")
# values of a password key that are no password (YAML booleans and nulls, written as text)
_NOT_A_VALUE = frozenset(("", "~", "null", "true", "false", "yes", "no", "|", ">", "|-", ">-"))

_XML_ATTR_RE = re.compile(r"""(?<![\w:.-])(?:passwd|password)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_XML_ELEM_RE = re.compile(
    r"<(passwd|password)(?:\s[^>]*)?>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*?))\s*</\1\s*>", re.IGNORECASE | re.DOTALL
)
_COOKIE_RE = re.compile(
    r"<cookie(?:\s[^>]*)?>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*?))\s*</cookie\s*>", re.IGNORECASE | re.DOTALL
)
_URI_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:([^/@\s]+)@")
# a password key on a line of YAML text: `password: x`, `- passwd: "x"`, `hashed_passwd: 'x'`
_YAML_KEY_RE = re.compile(
    r"""^\s*(?:-\s+)?["']?(?:password|passwd|hashed_passwd|plain_text_passwd)["']?\s*:\s*(.*?)\s*$""",
    re.IGNORECASE | re.MULTILINE,
)
# a chpasswd list entry on a line of its own: `root:secret`, `- user:"secret"` (no space after the colon:
# YAML reads it as one plain text, not a mapping)
_CHPASSWD_LINE_RE = re.compile(r"""^\s*(?:-\s+)?["']?[\w.@-]+:(?!\s)(\S.*?)["']?\s*$""", re.MULTILINE)


def _unquote(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text.split(" #", 1)[0].strip()


def _keep(out, value):
    if isinstance(value, str):
        value = value.strip()
        if value and value.lower() not in _NOT_A_VALUE:
            out.add(value)


def option_strings(value):
    """Every string in ``value`` (an option's value: nested lists and dicts too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from option_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from option_strings(v)


def xml_secrets(text):
    """The passwords an XML text carries: ``passwd``/``password`` attributes and elements."""
    out = set()
    if not isinstance(text, str) or "<" not in text:
        return out
    for a, b in _XML_ATTR_RE.findall(text):
        _keep(out, a or b)
    for _tag, cdata, plain in _XML_ELEM_RE.findall(text):
        _keep(out, cdata or plain)
    for cdata, plain in _COOKIE_RE.findall(text):
        _keep(out, cdata or plain)
    return out


# Secrets read from libvirt during this run (a definition read with VIR_DOMAIN_XML_SECURE: the console
# password being replaced, a disk's cookies). A module is one process and one run: runner.run_module adds
# them to the module's no_log_values before it reports anything.
_READ_SECRETS = set()


def register_read_secrets(values):
    """Remember secrets read from libvirt, to be masked in the result, the diff and the logs."""
    for v in values or ():
        _keep(_READ_SECRETS, v)


def forget_read_secrets():
    """A new run: nothing read from libvirt yet (runner.LibvirtModule, when it reads its options)."""
    _READ_SECRETS.clear()


def read_secrets():
    """The secrets read from libvirt so far (see :func:`register_read_secrets`)."""
    return set(_READ_SECRETS)


def uri_secrets(text):
    """The password of every ``scheme://user:password@host`` in ``text``."""
    if not isinstance(text, str) or "://" not in text:
        return set()
    out = set()
    for pw in _URI_RE.findall(text):
        _keep(out, pw)
        _keep(out, unquote(pw))  # as it is sent (an http URL's password may be percent-encoded)
    return out


def _chpasswd_entries(out, entries):
    if isinstance(entries, str):
        entries = entries.splitlines()
    if isinstance(entries, (list, tuple)):
        for entry in entries:
            if isinstance(entry, str) and ":" in entry:
                _keep(out, entry.split(":", 1)[1])


def _walk_cloud_config(out, value):
    if isinstance(value, dict):
        for key, v in value.items():
            name = str(key).lower()
            if name in PASSWORD_KEYS:
                _keep(out, v if isinstance(v, str) else None)
            if name == "chpasswd" and isinstance(v, dict):
                _chpasswd_entries(out, v.get("list"))
            _walk_cloud_config(out, v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_cloud_config(out, v)


def cloud_config_secrets(value):
    """The passwords of a cloud-init document (``user_data``, ``meta_data``, ``network_config``): a
    dictionary or list, or its YAML text."""
    out = set()
    if isinstance(value, (dict, list, tuple)):
        _walk_cloud_config(out, value)
        return out
    if not isinstance(value, str):
        return out
    if HAS_YAML:
        try:
            _walk_cloud_config(out, yaml.safe_load(value))
        except Exception:  # not YAML (a script, a MIME multipart): the line rules below still apply
            pass
    # line by line as well: a document that is not YAML, or parts PyYAML is not there to read
    for raw in _YAML_KEY_RE.findall(value):
        _keep(out, _unquote(raw))
    if "chpasswd" in value:
        for raw in _CHPASSWD_LINE_RE.findall(value):
            _keep(out, _unquote(raw))
    return out


def _cloud_init_dicts(value):
    """Every dictionary given as ``cloud_init`` anywhere in ``value``."""
    if isinstance(value, dict):
        for key, v in value.items():
            if key == "cloud_init" and isinstance(v, dict):
                yield v
            yield from _cloud_init_dicts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _cloud_init_dicts(v)


def param_secrets(params):
    """Every secret the options ``params`` (raw, as the module received them) carry inside their values."""
    out = set()
    for text in option_strings(params):
        out |= xml_secrets(text)
        out |= uri_secrets(text)
    for ci in _cloud_init_dicts(params):
        for key in CLOUD_INIT_KEYS:
            out |= cloud_config_secrets(ci.get(key))
    return out


__all__ = [
    "cloud_config_secrets",
    "forget_read_secrets",
    "param_secrets",
    "read_secrets",
    "register_read_secrets",
    "uri_secrets",
    "xml_secrets",
]
