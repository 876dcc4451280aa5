"""A small application that uses KMS the way services commonly do.

- `SecretsVault`: envelope encryption of secrets (a data key from GenerateDataKey, AES-GCM here,
  the encrypted data key stored beside the ciphertext, the tenant in the encryption context).
- `ManifestSigner`: signs release manifests with an asymmetric KMS key (ECDSA P-256).
- `TenantKeys`: one key per tenant, found by alias, tagged, rotation on.
"""

import base64
import json
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class VaultError(Exception):
    pass


class SecretsVault:
    def __init__(self, kms, key_id):
        self.kms = kms
        self.key_id = key_id

    def seal(self, tenant, name, secret: bytes) -> str:
        context = {"tenant": tenant, "secret": name}
        dk = self.kms.generate_data_key(KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=context)
        nonce = os.urandom(12)
        body = AESGCM(dk["Plaintext"]).encrypt(nonce, secret, name.encode())
        return json.dumps(
            {
                "v": 1,
                "key": dk["KeyId"],
                "edk": base64.b64encode(dk["CiphertextBlob"]).decode(),
                "nonce": base64.b64encode(nonce).decode(),
                "body": base64.b64encode(body).decode(),
            }
        )

    def open(self, tenant, name, sealed: str) -> bytes:
        doc = json.loads(sealed)
        context = {"tenant": tenant, "secret": name}
        try:
            dk = self.kms.decrypt(
                CiphertextBlob=base64.b64decode(doc["edk"]), EncryptionContext=context
            )
        except self.kms.exceptions.InvalidCiphertextException as e:
            raise VaultError("not sealed for this tenant and name") from e
        return AESGCM(dk["Plaintext"]).decrypt(
            base64.b64decode(doc["nonce"]), base64.b64decode(doc["body"]), name.encode()
        )

    def reseal_for(self, sealed: str, tenant, name, new_key_id) -> str:
        """Moves a sealed secret's data key under another KMS key (ReEncrypt)."""
        doc = json.loads(sealed)
        context = {"tenant": tenant, "secret": name}
        out = self.kms.re_encrypt(
            CiphertextBlob=base64.b64decode(doc["edk"]),
            SourceEncryptionContext=context,
            DestinationKeyId=new_key_id,
            DestinationEncryptionContext=context,
        )
        doc["edk"] = base64.b64encode(out["CiphertextBlob"]).decode()
        doc["key"] = out["KeyId"]
        return json.dumps(doc)


class ManifestSigner:
    def __init__(self, kms, key_id):
        self.kms = kms
        self.key_id = key_id

    @classmethod
    def create(cls, kms, description):
        meta = kms.create_key(
            Description=description, KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256"
        )["KeyMetadata"]
        return cls(kms, meta["KeyId"])

    def sign(self, manifest: dict) -> dict:
        payload = json.dumps(manifest, sort_keys=True).encode()
        sig = self.kms.sign(
            KeyId=self.key_id,
            Message=payload,
            MessageType="RAW",
            SigningAlgorithm="ECDSA_SHA_256",
        )["Signature"]
        return {"manifest": manifest, "signature": base64.b64encode(sig).decode()}

    def verify(self, signed: dict) -> bool:
        payload = json.dumps(signed["manifest"], sort_keys=True).encode()
        try:
            return self.kms.verify(
                KeyId=self.key_id,
                Message=payload,
                MessageType="RAW",
                Signature=base64.b64decode(signed["signature"]),
                SigningAlgorithm="ECDSA_SHA_256",
            )["SignatureValid"]
        except self.kms.exceptions.KMSInvalidSignatureException:
            return False

    def public_key_der(self) -> bytes:
        return self.kms.get_public_key(KeyId=self.key_id)["PublicKey"]


class TenantKeys:
    def __init__(self, kms, prefix):
        self.kms = kms
        self.prefix = prefix

    def alias(self, tenant):
        return f"alias/{self.prefix}/{tenant}"

    def provision(self, tenant):
        meta = self.kms.create_key(
            Description=f"tenant {tenant}",
            Tags=[{"TagKey": "tenant", "TagValue": tenant}, {"TagKey": "app", "TagValue": self.prefix}],
        )["KeyMetadata"]
        self.kms.create_alias(AliasName=self.alias(tenant), TargetKeyId=meta["KeyId"])
        self.kms.enable_key_rotation(KeyId=meta["KeyId"])
        return meta["KeyId"]

    def key_of(self, tenant):
        return self.kms.describe_key(KeyId=self.alias(tenant))["KeyMetadata"]["KeyId"]

    def tenants(self):
        names = []
        for page in self.kms.get_paginator("list_aliases").paginate():
            for a in page["Aliases"]:
                if a["AliasName"].startswith(f"alias/{self.prefix}/"):
                    names.append(a["AliasName"].rsplit("/", 1)[1])
        return sorted(names)

    def suspend(self, tenant):
        self.kms.disable_key(KeyId=self.key_of(tenant))

    def offboard(self, tenant, days=7):
        key = self.key_of(tenant)
        self.kms.delete_alias(AliasName=self.alias(tenant))
        return self.kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=days)
