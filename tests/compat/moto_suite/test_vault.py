"""The application's tests, as written against moto_server (see README.md)."""

import json

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault import ManifestSigner, SecretsVault, TenantKeys, VaultError


@pytest.fixture
def vault_key(kms, unique):
    key = kms.create_key(Description=f"vault {unique}")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=f"alias/vault-{unique}", TargetKeyId=key)
    return key


def test_seal_and_open_a_secret(kms, vault_key, unique):
    vault = SecretsVault(kms, f"alias/vault-{unique}")
    sealed = vault.seal("acme", "db-password", b"hunter2")
    assert b"hunter2" not in sealed.encode()
    assert json.loads(sealed)["key"].endswith(vault_key)
    assert vault.open("acme", "db-password", sealed) == b"hunter2"


def test_a_secret_does_not_open_for_another_tenant(kms, vault_key):
    vault = SecretsVault(kms, vault_key)
    sealed = vault.seal("acme", "api-token", b"t0k3n")
    with pytest.raises(VaultError):
        vault.open("globex", "api-token", sealed)
    with pytest.raises(VaultError):
        vault.open("acme", "other-name", sealed)


def test_reseal_under_a_new_key(kms, vault_key, unique):
    vault = SecretsVault(kms, vault_key)
    sealed = vault.seal("acme", "cert-key", b"-----BEGIN KEY-----")
    new_key = kms.create_key(Description=f"vault v2 {unique}")["KeyMetadata"]["KeyId"]
    moved = vault.reseal_for(sealed, "acme", "cert-key", new_key)
    assert json.loads(moved)["key"].endswith(new_key)
    assert vault.open("acme", "cert-key", moved) == b"-----BEGIN KEY-----"


def test_encrypt_decrypt_with_context(kms, vault_key):
    blob = kms.encrypt(
        KeyId=vault_key, Plaintext=b"small secret", EncryptionContext={"purpose": "test"}
    )["CiphertextBlob"]
    out = kms.decrypt(CiphertextBlob=blob, EncryptionContext={"purpose": "test"})
    assert out["Plaintext"] == b"small secret"
    assert out["KeyId"].endswith(vault_key)
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"purpose": "other"})
    assert e.value.response["Error"]["Code"] == "InvalidCiphertextException"


def test_data_key_without_plaintext_decrypts_later(kms, vault_key):
    out = kms.generate_data_key_without_plaintext(
        KeyId=vault_key, KeySpec="AES_256", EncryptionContext={"job": "42"}
    )
    assert "Plaintext" not in out
    dk = kms.decrypt(CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"job": "42"})
    assert len(dk["Plaintext"]) == 32


def test_describe_key_metadata(kms, vault_key):
    meta = kms.describe_key(KeyId=vault_key)["KeyMetadata"]
    assert meta["KeyId"] == vault_key
    assert meta["Enabled"] is True
    assert meta["KeyState"] == "Enabled"
    assert meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    assert meta["KeyManager"] == "CUSTOMER"
    assert meta["Origin"] == "AWS_KMS"
    assert meta["Arn"].startswith("arn:aws:kms:us-east-1:")


def test_generate_random(kms):
    assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64


def test_sign_and_verify_a_manifest(kms, unique):
    signer = ManifestSigner.create(kms, f"releases {unique}")
    signed = signer.sign({"version": "1.2.3", "sha256": "ab" * 32})
    assert signer.verify(signed)
    signed["manifest"]["version"] = "1.2.4"
    assert not signer.verify(signed)


def test_the_public_key_verifies_offline(kms, unique):
    signer = ManifestSigner.create(kms, f"releases offline {unique}")
    signed = signer.sign({"version": "9"})
    public = serialization.load_der_public_key(signer.public_key_der())
    import base64

    public.verify(
        base64.b64decode(signed["signature"]),
        json.dumps(signed["manifest"], sort_keys=True).encode(),
        ec.ECDSA(hashes.SHA256()),
    )


def test_tenant_provisioning(kms, unique):
    tenants = TenantKeys(kms, f"app{unique}")
    key = tenants.provision("acme")
    tenants.provision("globex")
    assert tenants.key_of("acme") == key
    assert tenants.tenants() == ["acme", "globex"]
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key)["Tags"]}
    assert tags == {"tenant": "acme", "app": f"app{unique}"}
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is True


def test_offboarding_schedules_deletion(kms, unique):
    tenants = TenantKeys(kms, f"app{unique}")
    key = tenants.provision("hooli")
    out = tenants.offboard("hooli", days=7)
    assert out["KeyId"].endswith(key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert tenants.tenants() == []
    kms.cancel_key_deletion(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"


def test_unknown_alias_is_not_found(kms, unique):
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId=f"alias/missing-{unique}")
    assert e.value.response["Error"]["Code"] == "NotFoundException"


def test_duplicate_alias_is_refused(kms, vault_key, unique):
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName=f"alias/vault-{unique}", TargetKeyId=vault_key)
    assert e.value.response["Error"]["Code"] == "AlreadyExistsException"


def test_regions_are_separate(kms, kms_eu, unique):
    eu_key = kms_eu.create_key(Description=f"eu {unique}")["KeyMetadata"]
    assert eu_key["Arn"].startswith("arn:aws:kms:eu-west-1:")
    kms_eu.create_alias(AliasName=f"alias/eu-{unique}", TargetKeyId=eu_key["KeyId"])
    us_ids = {k["KeyId"] for p in kms.get_paginator("list_keys").paginate() for k in p["Keys"]}
    assert eu_key["KeyId"] not in us_ids
    with pytest.raises(ClientError) as e:
        kms.describe_key(KeyId=f"alias/eu-{unique}")
    assert e.value.response["Error"]["Code"] == "NotFoundException"
    blob = kms_eu.encrypt(KeyId=f"alias/eu-{unique}", Plaintext=b"eu data")["CiphertextBlob"]
    assert kms_eu.decrypt(CiphertextBlob=blob)["Plaintext"] == b"eu data"


def test_grant_lets_a_service_decrypt(kms, vault_key):
    grant = kms.create_grant(
        KeyId=vault_key,
        GranteePrincipal="arn:aws:iam::123456789012:role/worker",
        Operations=["Decrypt", "GenerateDataKey"],
    )
    assert grant["GrantId"] and grant["GrantToken"]
    grants = kms.list_grants(KeyId=vault_key)["Grants"]
    assert [g["GrantId"] for g in grants] == [grant["GrantId"]]
    kms.revoke_grant(KeyId=vault_key, GrantId=grant["GrantId"])
    assert kms.list_grants(KeyId=vault_key)["Grants"] == []
