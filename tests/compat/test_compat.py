"""Unmodified AWS clients against `p11kms serve`: boto3, the AWS CLI and the AWS Encryption SDK.

The server is the real binary (P11KMS_BIN, default target/debug/p11kms) on a fresh embedded
token in a temporary state folder, on an ephemeral loopback port. Clients get nothing but the
`export ...` lines the server prints, exactly as a user pastes them.

With P11KMS_TEST_TOKEN=kryoptic (and P11KMS_KRYOPTIC_MODULE), the token is a fresh Kryoptic
token reached through a configuration file instead, initialised with `p11kms token init
--so-pin-file`; the server then prints no credential (it never does for a file configuration),
so the clients get the access key this fixture wrote into that file.

Run: python -m pytest tests/compat (after `cargo build` and installing requirements.txt).
"""

import base64
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("P11KMS_BIN", str(REPO / "target" / "debug" / "p11kms"))
START_TIMEOUT = 60
TOKEN = os.environ.get("P11KMS_TEST_TOKEN") or "softhsm"


class Server:
    def __init__(self, env, endpoint, listen, state_dir, proc):
        self.env = env  # the pasted AWS_* variables
        self.endpoint = endpoint
        self.listen = listen
        self.state_dir = state_dir
        self.proc = proc


def _clean_env(extra):
    """This process's environment without AWS settings that could steer the clients."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_")
        and k
        not in (
            "P11KMS_CONFIG",
            "SOFTHSM2_CONF",
            "KRYOPTIC_CONF",
            "P11KMS_REQUIRE_IN_TOKEN_SEALING",
        )
    }
    env.update(extra)
    return env


def _secret_file(path, value):
    path.write_text(value + "\n")
    path.chmod(0o600)


def _kryoptic_token(state):
    """A fresh Kryoptic token and the configuration file naming it; returns (env, credential)."""
    module = os.environ.get("P11KMS_KRYOPTIC_MODULE")
    if not module:
        pytest.fail("P11KMS_TEST_TOKEN=kryoptic needs P11KMS_KRYOPTIC_MODULE (scripts/kryoptic.sh)")
    (state / "kryoptic.toml").write_text(
        f'[[slots]]\nslot = 1\ndbtype = "sqlite"\ndbargs = "{state / "kryoptic.sql"}"\n'
    )
    _secret_file(state / "so.pin", os.urandom(16).hex())
    _secret_file(state / "user.pin", os.urandom(16).hex())
    key_id, secret = "AKIACOMPATKRYOPTIC01", base64.b64encode(os.urandom(30)).decode()
    _secret_file(state / "dev-secret-key", secret)
    conf = state / "p11kms.toml"
    conf.write_text(
        f"""[token]
module = "{module}"
label = "p11kms"
pin_file = "{state / 'user.pin'}"
env = {{ KRYOPTIC_CONF = "{state / 'kryoptic.toml'}" }}

[[server.credentials]]
access_key_id = "{key_id}"
secret_file = "{state / 'dev-secret-key'}"
principal = "arn:aws:iam::111122223333:user/dev"
"""
    )
    env = _clean_env({"P11KMS_CONFIG": str(conf), "P11KMS_LISTEN": "127.0.0.1:0"})
    subprocess.run(
        [BIN, "token", "init", "--so-pin-file", str(state / "so.pin")],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return env, {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}


@pytest.fixture(scope="session")
def server():
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"p11kms binary not found at {BIN}: run `cargo build` or set P11KMS_BIN")
    state = Path(tempfile.mkdtemp(prefix="p11kms-compat-"))
    if TOKEN == "kryoptic":
        base, exports = _kryoptic_token(state)
    else:
        base = _clean_env({"P11KMS_STATE_DIR": str(state), "P11KMS_LISTEN": "127.0.0.1:0"})
        subprocess.run(
            [BIN, "token", "init"], env=base, check=True, capture_output=True, timeout=120
        )
        exports = {}
    log = open(state / "server.log", "wb")
    proc = subprocess.Popen(
        [BIN, "serve"], env=base, stdout=subprocess.PIPE, stderr=log, text=True
    )
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    listen = None
    try:
        while listen is None:
            line = lines.get(timeout=START_TIMEOUT)
            if line is None:
                raise RuntimeError("p11kms serve exited before listening")
            line = line.strip()
            if line.startswith("export "):
                name, _, value = line[len("export ") :].partition("=")
                exports[name] = shlex.split(value)[0]
            elif line.startswith("listening on "):
                listen = line[len("listening on ") :]
    except BaseException:
        proc.kill()
        proc.wait()
        raise RuntimeError(
            "p11kms serve did not start: " + (state / "server.log").read_text(errors="replace")
        )
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert name in exports, f"serve did not print export {name}"
    assert exports["AWS_ENDPOINT_URL"] == f"http://{listen}"

    # Paste the lines into this process, as a user would into a shell; keep clients away
    # from any real AWS configuration on the machine.
    saved = dict(os.environ)
    for k in list(os.environ):
        if k.startswith("AWS_"):
            del os.environ[k]
    os.environ.update(exports)
    os.environ["AWS_CONFIG_FILE"] = str(state / "no-aws-config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(state / "no-aws-credentials")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    try:
        yield Server(exports, exports["AWS_ENDPOINT_URL"], listen, state, proc)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        assert code == 0, "graceful shutdown on SIGTERM: " + (state / "server.log").read_text(
            errors="replace"
        )
        shutil.rmtree(state, ignore_errors=True)


def kms_client():
    # Nothing but the pasted environment: no endpoint_url, no keys in code.
    return boto3.client("kms")


def new_key(description="compat"):
    return kms_client().create_key(Description=description)["KeyMetadata"]


def test_boto3_seed_flow(server):
    kms = kms_client()
    key = new_key()
    assert key["Arn"].startswith("arn:aws:kms:us-east-2:")
    ctx = {"purpose": "test"}
    dk = kms.generate_data_key_without_plaintext(
        KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext=ctx
    )
    assert dk["KeyId"] == key["Arn"]
    assert "Plaintext" not in dk
    out = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)
    assert len(out["Plaintext"]) == 32
    assert out["KeyId"] == key["Arn"]
    assert out["ResponseMetadata"]["RequestId"]
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"purpose": "other"})
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])


def test_boto3_management_calls(server):
    kms = kms_client()
    key = new_key("managed")
    described = kms.describe_key(KeyId=key["Arn"])["KeyMetadata"]
    assert described["KeyState"] == "Enabled"
    assert described["CreationDate"].year >= 2024  # epoch seconds parsed as a datetime
    kms.create_alias(AliasName="alias/compat-boto3", TargetKeyId=key["KeyId"])
    with pytest.raises(kms.exceptions.AlreadyExistsException):
        kms.create_alias(AliasName="alias/compat-boto3", TargetKeyId=key["KeyId"])
    enc = kms.encrypt(KeyId="alias/compat-boto3", Plaintext=b"hello")
    assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])["Plaintext"] == b"hello"
    # Operations without output answer an empty 200 that botocore accepts.
    kms.disable_key(KeyId=key["KeyId"])
    with pytest.raises(kms.exceptions.DisabledException):
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
    kms.enable_key(KeyId=key["KeyId"])
    aliases = [
        a["AliasName"]
        for page in kms.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 1})
        for a in page["Aliases"]
    ]
    assert "alias/compat-boto3" in aliases
    keys = [
        k["KeyId"]
        for page in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1})
        for k in page["Keys"]
    ]
    assert key["KeyId"] in keys
    with pytest.raises(kms.exceptions.NotFoundException):
        kms.describe_key(KeyId="alias/compat-missing")
    assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64


def test_boto3_wrong_credentials(server):
    bad = boto3.client(
        "kms", aws_access_key_id="AKIANOTCONFIGURED001", aws_secret_access_key="nope"
    )
    with pytest.raises(ClientError) as e:
        bad.list_keys()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    wrong = boto3.client(
        "kms",
        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(ClientError) as e:
        wrong.list_keys()
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"


def _aws(*args, check=True):
    aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
    assert aws, "the AWS CLI (awscli from requirements.txt) is not installed"
    return subprocess.run(
        [aws, *args, "--output", "json"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_aws_cli_data_key_then_decrypt(server, tmp_path):
    key = new_key("cli")
    r = _aws(
        "kms",
        "generate-data-key-without-plaintext",
        "--key-id",
        key["KeyId"],
        "--key-spec",
        "AES_256",
        "--encryption-context",
        "purpose=test",
        "--endpoint-url",
        server.endpoint,
    )
    out = json.loads(r.stdout)
    assert out["KeyId"] == key["Arn"]
    blob = tmp_path / "datakey.bin"
    blob.write_bytes(base64.b64decode(out["CiphertextBlob"]))

    r = _aws(
        "kms",
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{blob}",
        "--encryption-context",
        "purpose=test",
        "--endpoint-url",
        server.endpoint,
    )
    out = json.loads(r.stdout)
    assert len(base64.b64decode(out["Plaintext"])) == 32
    assert out["KeyId"] == key["Arn"]

    r = _aws(
        "kms",
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{blob}",
        "--encryption-context",
        "purpose=other",
        "--endpoint-url",
        server.endpoint,
        check=False,
    )
    assert r.returncode != 0
    assert "InvalidCiphertextException" in r.stderr


def test_start_up_log_states_custody(server):
    log = (server.state_dir / "server.log").read_text(errors="replace")
    lines = [l for l in log.splitlines() if l.startswith("p11kms: custody: ")]
    assert len(lines) == 15, log
    (without,) = [l for l in lines if "GenerateDataKeyWithoutPlaintext: " in l]
    (pair,) = [l for l in lines if "GenerateDataKeyPairWithoutPlaintext: " in l]
    if TOKEN == "kryoptic":
        assert without.endswith("plaintext: token only"), without
        assert pair.endswith("plaintext: token only"), pair
    else:
        assert "plaintext: host memory for ~" in without, without
        assert "plaintext: host memory from the read to the seal" in pair, pair


def test_aws_cli_uses_the_pasted_endpoint(server):
    # No --endpoint-url: AWS_ENDPOINT_URL from the printed lines is enough.
    r = _aws("kms", "list-keys")
    assert "Keys" in json.loads(r.stdout)


def test_encryption_sdk_multi_mib_round_trip(server):
    import aws_encryption_sdk
    from aws_encryption_sdk import CommitmentPolicy

    key = new_key("esdk")
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    # A plain botocore session: it takes the endpoint from AWS_ENDPOINT_URL, like every
    # botocore client, and the region from the key ARN.
    session = botocore.session.Session()
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key["Arn"]], botocore_session=session
    )
    plaintext = os.urandom(4 * 1024 * 1024)
    context = {"purpose": "compat", "tenant": "t-1"}
    ciphertext, enc_header = client.encrypt(
        source=plaintext, key_provider=provider, encryption_context=context
    )
    assert len(ciphertext) > len(plaintext)
    edks = [
        (k.key_provider.provider_id, k.key_provider.key_info.decode())
        for k in enc_header.encrypted_data_keys
    ]
    assert edks == [("aws-kms", key["Arn"])]

    decrypted, dec_header = client.decrypt(source=ciphertext, key_provider=provider)
    assert decrypted == plaintext
    for name, value in context.items():
        assert dec_header.encryption_context[name] == value

    # The data key really is bound to the context: tampering with the message fails.
    tampered = bytearray(ciphertext)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(Exception):
        client.decrypt(source=bytes(tampered), key_provider=provider)
