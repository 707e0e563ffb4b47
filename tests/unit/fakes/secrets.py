"""libvirt's secret driver as test:///default lacks it: a connection wrapper adding the virSecret calls,
behaving as libvirt 9's secret driver does (one secret per usage, private values refused to clients,
values of persistent secrets stored as ``<uuid>.base64`` beside ``<uuid>.xml`` in the secrets directory)."""

import base64
import os
import uuid as uuidlib

import libvirt
from lxml import etree

USAGE = {"ceph": "name", "iscsi": "target", "volume": "volume", "tls": "name", "vtpm": "name"}
USAGE_CODE = {
    getattr(libvirt, "VIR_SECRET_USAGE_TYPE_" + k.upper()): k for k in ("ceph", "iscsi", "volume", "tls", "vtpm")
}


class FakeError(libvirt.libvirtError):
    def __init__(self, code_name, message):
        libvirt.libvirtError.__init__(self, message)
        self._code = getattr(libvirt, "VIR_ERR_" + code_name)
        self._message = message

    def get_error_code(self):
        return self._code

    def get_error_domain(self):
        return getattr(libvirt, "VIR_FROM_SECRET", 0)

    def get_error_message(self):
        return self._message


class FakeSecret:
    def __init__(self, driver, root):
        self.driver = driver
        self.root = root

    def UUIDString(self):
        return self.root.findtext("uuid")

    def XMLDesc(self, flags=0):
        return etree.tostring(self.root).decode()

    def _usage(self):
        u = self.root.find("usage")
        return (u.get("type"), (u.findtext(USAGE[u.get("type")]) or "").strip()) if u is not None else None

    def value(self, flags=0):
        if self.root.get("private") == "yes":
            raise FakeError("INVALID_SECRET", "Invalid secret: secret is private")
        if self.UUIDString() not in self.driver.values:
            raise FakeError("NO_SECRET", "secret '{}' does not have a value".format(self.UUIDString()))
        return self.driver.values[self.UUIDString()]

    def setValue(self, value, flags=0):
        self.driver.values[self.UUIDString()] = bytes(value)
        self.driver.sets += 1
        if self.root.get("ephemeral") != "yes":
            with open(self.driver.path(self.UUIDString(), "base64"), "wb") as fh:
                fh.write(base64.b64encode(bytes(value)))
        return 0

    def undefine(self):
        u = self.UUIDString()
        self.driver.secrets.pop(u)
        self.driver.values.pop(u, None)
        for ext in ("xml", "base64"):
            if os.path.exists(self.driver.path(u, ext)):
                os.unlink(self.driver.path(u, ext))
        return 0


class SecretDriver:
    def __init__(self, directory):
        self.directory = directory
        self.secrets = {}
        self.values = {}
        self.sets = 0

    def path(self, u, ext):
        return os.path.join(self.directory, "{}.{}".format(u, ext))


class FakeConnection:
    """test:///default plus the secret driver (the state lives in ``driver``)."""

    def __init__(self, real, driver):
        self._real = real
        self._driver = driver

    def __getattr__(self, name):
        return getattr(self._real, name)

    def secretDefineXML(self, xml, flags=0):
        root = etree.fromstring(xml)
        if root.find("uuid") is None:
            el = etree.SubElement(root, "uuid")
            el.text = str(uuidlib.uuid4())
        sec = FakeSecret(self._driver, root)
        usage = sec._usage()
        for other in self._driver.secrets.values():
            if other.UUIDString() != sec.UUIDString() and usage and other._usage() == usage:
                raise FakeError(
                    "INTERNAL_ERROR",
                    "a secret with UUID {} already defined for use with {}".format(other.UUIDString(), usage[1]),
                )
        old = self._driver.secrets.get(sec.UUIDString())
        if old is not None and old._usage() != usage:
            raise FakeError("INTERNAL_ERROR", "a secret with UUID {} is already defined".format(sec.UUIDString()))
        self._driver.secrets[sec.UUIDString()] = sec
        if root.get("ephemeral") != "yes":
            with open(self._driver.path(sec.UUIDString(), "xml"), "wb") as fh:
                fh.write(xml.encode())
        return sec

    def secretLookupByUUIDString(self, u):
        if u not in self._driver.secrets:
            raise FakeError("NO_SECRET", "Secret not found: no secret with matching uuid '{}'".format(u))
        return self._driver.secrets[u]

    def secretLookupByUsage(self, usage_type, usage_id):
        for sec in self._driver.secrets.values():
            if sec._usage() == (USAGE_CODE[usage_type], usage_id):
                return sec
        raise FakeError("NO_SECRET", "Secret not found: no secret with matching usage '{}'".format(usage_id))

    def listAllSecrets(self, flags=0):
        return list(self._driver.secrets.values())
