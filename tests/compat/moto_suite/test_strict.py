"""What a real KMS enforces and moto does not: this file fails on moto_server.

`test_compat.py::test_moto_suite_runs_unchanged` runs it against p11kms only, after the moto
suite (test_vault.py) passed on both.
"""

import pytest
from botocore.exceptions import ClientError

from vault import TenantKeys


def test_key_usage_is_described(kms, unique):
    key = kms.create_key(Description=f"strict {unique}")["KeyMetadata"]
    assert key["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert key["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]


def test_a_suspended_tenant_cannot_encrypt(kms, unique):
    tenants = TenantKeys(kms, f"app{unique}")
    tenants.provision("initech")
    tenants.suspend("initech")
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=tenants.alias("initech"), Plaintext=b"x")
    assert e.value.response["Error"]["Code"] == "DisabledException"
    kms.enable_key(KeyId=tenants.key_of("initech"))
    kms.encrypt(KeyId=tenants.alias("initech"), Plaintext=b"x")



def test_a_key_pending_deletion_cannot_encrypt(kms, unique):
    tenants = TenantKeys(kms, f"app{unique}")
    key = tenants.provision("hooli")
    tenants.offboard("hooli", days=7)
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    assert e.value.response["Error"]["Code"] == "KMSInvalidStateException"


def test_a_signing_key_cannot_encrypt(kms, unique):
    key = kms.create_key(
        Description=f"strict sign {unique}", KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256"
    )["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    assert e.value.response["Error"]["Code"] == "InvalidKeyUsageException"


def test_a_tampered_ciphertext_is_refused(kms, unique):
    key = kms.create_key(Description=f"strict tamper {unique}")["KeyMetadata"]["KeyId"]
    blob = bytearray(kms.encrypt(KeyId=key, Plaintext=b"payload")["CiphertextBlob"])
    blob[-1] ^= 1
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=bytes(blob))
    assert e.value.response["Error"]["Code"] == "InvalidCiphertextException"
