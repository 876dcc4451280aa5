"""Unmodified AWS clients against `p11kms serve`: boto3, the AWS CLI and the AWS Encryption SDK;
`cryptography` checks every signature, public key, data key pair and shared secret the server
makes, and encrypts for it to decrypt.

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
import hashlib
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

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


def test_boto3_model_constraints_without_client_validation(server):
    """boto3 checks lengths, ranges and required members itself; with that turned off the
    server answers what AWS does: ValidationException in AWS's words, DryRun as AWS words it."""
    from botocore.config import Config

    kms = boto3.client("kms", config=Config(parameter_validation=False))
    key = new_key("model")
    with pytest.raises(ClientError) as e:
        kms.create_alias(AliasName="alias/a;b", TargetKeyId=key["KeyId"])
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert e.value.response["Error"]["Message"] == (
        "1 validation error detected: Value 'alias/a;b' at 'aliasName' failed to satisfy "
        "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
    )
    with pytest.raises(ClientError) as e:
        kms.generate_random(NumberOfBytes=0)
    assert e.value.response["Error"]["Message"] == (
        "1 validation error detected: Value '0' at 'numberOfBytes' failed to satisfy "
        "constraint: Member must have value greater than or equal to 1"
    )
    with pytest.raises(ClientError) as e:
        kms.describe_key()
    assert e.value.response["Error"]["Message"] == (
        "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: "
        "Member must not be null"
    )
    with pytest.raises(ClientError) as e:
        kms.create_key(Tags=[{"TagKey": "k" * 129, "TagValue": "v"}])
    assert "at 'tags.1.member.tagKey' failed to satisfy constraint: Member must have length " \
        "less than or equal to 128" in e.value.response["Error"]["Message"]
    with pytest.raises(kms.exceptions.DryRunOperationException) as e:
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x", DryRun=True)
    assert e.value.response["Error"]["Message"] == (
        "The request would have succeeded, but the DryRun option is set."
    )


def test_boto3_key_policies(server):
    kms = kms_client()
    key = new_key("policies")
    account = key["Arn"].split(":")[4]
    default = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    assert default["Statement"][0]["Principal"]["AWS"] == f"arn:aws:iam::{account}:root"
    assert kms.list_key_policies(KeyId=key["KeyId"])["PolicyNames"] == ["default"]
    me = f"arn:aws:iam::{account}:user/dev"
    mine = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": me}, "Action": "kms:*", "Resource": "*"},
                {
                    "Effect": "Deny",
                    "Principal": {"AWS": me},
                    "Action": "kms:Encrypt",
                    "Resource": "*",
                    "Condition": {"StringNotEquals": {"kms:EncryptionContext:app": "compat"}},
                },
            ],
        }
    )
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=mine)
    assert kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"] == mine
    kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext={"app": "compat"})
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext={"app": "other"})
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy="{}")
    locks_out = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:user/someone-else"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.create_key(Policy=locks_out)


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
    assert len(lines) == 16, log
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


# ---- Asymmetric and HMAC keys, checked by `cryptography` ------------------------------------

MESSAGE = b"p11kms signs this in the token"
HASHES = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512}
RSA_SIGNING = [
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
]
# The SigningAlgorithms AWS lists per key spec. RSA_4096 generation is slow on SoftHSM: the
# suite makes one 4096-bit key (a data key pair).
SIGNING = {
    "RSA_2048": RSA_SIGNING,
    "RSA_3072": RSA_SIGNING,
    "ECC_NIST_P256": ["ECDSA_SHA_256"],
    "ECC_NIST_P384": ["ECDSA_SHA_384"],
    "ECC_NIST_P521": ["ECDSA_SHA_512"],
    "ECC_SECG_P256K1": ["ECDSA_SHA_256"],
    "ECC_NIST_EDWARDS25519": ["ED25519_SHA_512", "ED25519_PH_SHA_512"],
}
KEY_PAIR_SPECS = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "ECC_NIST_EDWARDS25519",
]
CURVES = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}


def _skip_unsupported(call, what):
    """`call()`, or a visible skip when the server says this token cannot do `what`."""
    kms = kms_client()
    try:
        return call()
    except kms.exceptions.UnsupportedOperationException as e:
        pytest.skip(f"{TOKEN} token: {what}: UnsupportedOperationException: {e}")


def new_asymmetric_key(spec, usage):
    kms = kms_client()
    return _skip_unsupported(
        lambda: kms.create_key(KeySpec=spec, KeyUsage=usage, Description=f"compat {spec}")[
            "KeyMetadata"
        ],
        f"CreateKey {spec} {usage}",
    )


_signing_keys = {}


def signing_key(spec):
    """One SIGN_VERIFY key per spec for the whole run (or the same visible skip each time)."""
    if spec not in _signing_keys:
        try:
            _signing_keys[spec] = ("key", new_asymmetric_key(spec, "SIGN_VERIFY"))
        except pytest.skip.Exception as e:
            _signing_keys[spec] = ("skip", str(e))
    kind, value = _signing_keys[spec]
    if kind == "skip":
        pytest.skip(value)
    return value


def public_key_of(key_id):
    out = kms_client().get_public_key(KeyId=key_id)
    return out, serialization.load_der_public_key(out["PublicKey"])


def _ed25519_verify(public, signature, data, dom=b""):
    """RFC 8032 Ed25519 verification ([S]B = R + [k]A), with the dom2 prefix `dom`
    (Ed25519ph: dom2(1, "") and data = SHA-512(M)). `cryptography` has no Ed25519ph; this is
    the RFC's reference arithmetic, checked against `cryptography` (pure Ed25519) and the
    RFC's Ed25519ph test vector in test_ed25519_checker_agrees_with_cryptography."""
    p = 2**255 - 19
    order = 2**252 + 27742317777372353535851937790883648493
    d = -121665 * pow(121666, p - 2, p) % p
    sqrt_m1 = pow(2, (p - 1) // 4, p)

    def decode(b):
        y = int.from_bytes(b, "little")
        sign, y = y >> 255, y & ((1 << 255) - 1)
        if y >= p:
            return None
        x2 = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
        x = pow(x2, (p + 3) // 8, p)
        if (x * x - x2) % p:
            x = x * sqrt_m1 % p
        if (x * x - x2) % p or (x == 0 and sign):
            return None
        if x & 1 != sign:
            x = p - x
        return (x, y, 1, x * y % p)

    def add(P, Q):
        a = (P[1] - P[0]) * (Q[1] - Q[0]) % p
        b = (P[1] + P[0]) * (Q[1] + Q[0]) % p
        c = 2 * P[3] * Q[3] * d % p
        e = 2 * P[2] * Q[2] % p
        e, f, g, h = b - a, e - c, e + c, b + a
        return (e * f % p, g * h % p, f * g % p, e * h % p)

    def mul(s, P):
        Q = (0, 1, 1, 0)
        while s:
            if s & 1:
                Q = add(Q, P)
            P, s = add(P, P), s >> 1
        return Q

    def same(P, Q):
        return not (P[0] * Q[2] - Q[0] * P[2]) % p and not (P[1] * Q[2] - Q[1] * P[2]) % p

    base = decode((4 * pow(5, p - 2, p) % p).to_bytes(32, "little"))
    A, R = decode(public), decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if A is None or R is None or s >= order or len(signature) != 64:
        return False
    k = int.from_bytes(hashlib.sha512(dom + signature[:32] + public + data).digest(), "little")
    return same(mul(s, base), add(R, mul(k % order, A)))


ED25519PH_DOM = b"SigEd25519 no Ed25519 collisions" + bytes([1, 0])


def test_ed25519_checker_agrees_with_cryptography():
    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    sig = private.sign(MESSAGE)
    assert _ed25519_verify(public, sig, MESSAGE)
    assert not _ed25519_verify(public, sig, MESSAGE + b"!")
    assert not _ed25519_verify(public, sig, MESSAGE, ED25519PH_DOM)
    bad = bytearray(sig)
    bad[5] ^= 1
    assert not _ed25519_verify(public, bytes(bad), MESSAGE)
    # RFC 8032 section 7.3, the Ed25519ph test vector ("abc").
    public = bytes.fromhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf")
    sig = bytes.fromhex(
        "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
        "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
    )
    digest = hashlib.sha512(b"abc").digest()
    assert _ed25519_verify(public, sig, digest, ED25519PH_DOM)
    assert not _ed25519_verify(public, sig, digest)


def _hash_of(alg):
    return HASHES[alg[-7:]]()


def _independent_verify(public, alg, message_type, message, signature):
    """Raises InvalidSignature unless an independent implementation accepts the signature."""
    if alg.startswith("ED25519_"):
        assert isinstance(public, ed25519.Ed25519PublicKey)
        if alg == "ED25519_SHA_512":
            public.verify(signature, message)
            return
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if not _ed25519_verify(raw, signature, message, ED25519PH_DOM):
            raise InvalidSignature("not an Ed25519ph signature of this digest")
        return
    h = _hash_of(alg)
    algorithm = utils.Prehashed(h) if message_type == "DIGEST" else h
    if alg.startswith("RSASSA_PSS_"):
        assert isinstance(public, rsa.RSAPublicKey)
        # AWS: PSS with MGF1 of the same hash and a salt as long as the digest.
        pad = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        public.verify(signature, message, pad, algorithm)
    elif alg.startswith("RSASSA_PKCS1_V1_5_"):
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, message, padding.PKCS1v15(), algorithm)
    elif alg.startswith("ECDSA_"):
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(signature, message, ec.ECDSA(algorithm))  # DER (r, s)
    else:
        raise AssertionError(f"no independent check for {alg}")


@pytest.mark.parametrize(
    "spec,alg", [(spec, alg) for spec, algs in SIGNING.items() for alg in algs]
)
def test_cryptography_verifies_every_signature(server, spec, alg):
    kms = kms_client()
    key = signing_key(spec)
    assert sorted(key["SigningAlgorithms"]) == sorted(SIGNING[spec])
    out, public = public_key_of(key["KeyId"])
    assert out["KeySpec"] == spec and out["KeyUsage"] == "SIGN_VERIFY"
    assert sorted(out["SigningAlgorithms"]) == sorted(SIGNING[spec])
    if spec in CURVES:
        assert isinstance(public.curve, CURVES[spec]), public.curve
    elif spec.startswith("RSA_"):
        assert public.key_size == int(spec[4:])
    # ED25519_SHA_512 signs the message itself, ED25519_PH_SHA_512 a SHA-512 digest; the
    # others take both.
    mtypes = {"ED25519_SHA_512": ["RAW"], "ED25519_PH_SHA_512": ["DIGEST"]}.get(
        alg, ["RAW", "DIGEST"]
    )
    for mtype in mtypes:
        message = MESSAGE
        if mtype == "DIGEST":
            message = hashlib.new(_hash_of(alg).name, MESSAGE).digest()
        signed = _skip_unsupported(
            lambda: kms.sign(
                KeyId=key["KeyId"], Message=message, MessageType=mtype, SigningAlgorithm=alg
            ),
            f"Sign {spec} {alg}",
        )
        assert signed["KeyId"] == key["Arn"]
        assert signed["SigningAlgorithm"] == alg
        sig = signed["Signature"]
        verified = kms.verify(
            KeyId=key["KeyId"],
            Message=message,
            MessageType=mtype,
            Signature=sig,
            SigningAlgorithm=alg,
        )
        assert verified["SignatureValid"] is True
        _independent_verify(public, alg, mtype, message, sig)
        changed = bytes([message[0] ^ 1]) + message[1:]
        with pytest.raises(InvalidSignature):
            _independent_verify(public, alg, mtype, changed, sig)
        with pytest.raises(kms.exceptions.KMSInvalidSignatureException):
            kms.verify(
                KeyId=key["KeyId"],
                Message=changed,
                MessageType=mtype,
                Signature=sig,
                SigningAlgorithm=alg,
            )


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
def test_cryptography_encrypts_and_the_server_decrypts(server, algorithm):
    kms = kms_client()
    key = new_asymmetric_key("RSA_2048", "ENCRYPT_DECRYPT")
    assert key["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    _, public = public_key_of(key["KeyId"])
    h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None)
    # AWS's limit for RSA_2048: 214 bytes (SHA-1), 190 bytes (SHA-256).
    for plaintext in [b"x", os.urandom(256 - 2 * h.digest_size - 2)]:
        ciphertext = public.encrypt(plaintext, oaep)
        out = kms.decrypt(
            KeyId=key["KeyId"], CiphertextBlob=ciphertext, EncryptionAlgorithm=algorithm
        )
        assert out["Plaintext"] == plaintext
        assert out["EncryptionAlgorithm"] == algorithm
        assert out["KeyId"] == key["Arn"]
    if algorithm == "RSAES_OAEP_SHA_256":
        # Neither hash opens the other's ciphertext.
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(
                KeyId=key["KeyId"],
                CiphertextBlob=ciphertext,
                EncryptionAlgorithm="RSAES_OAEP_SHA_1",
            )
        sha1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        with pytest.raises(kms.exceptions.InvalidCiphertextException):
            kms.decrypt(
                KeyId=key["KeyId"],
                CiphertextBlob=public.encrypt(b"sha-1", sha1),
                EncryptionAlgorithm=algorithm,
            )
    # And the other way: the server's ciphertext is plain RSAES-OAEP of the key's size.
    enc = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"server", EncryptionAlgorithm=algorithm)
    assert len(enc["CiphertextBlob"]) == 256
    out = kms.decrypt(
        KeyId=key["KeyId"], CiphertextBlob=enc["CiphertextBlob"], EncryptionAlgorithm=algorithm
    )
    assert out["Plaintext"] == b"server"


@pytest.mark.parametrize("spec", KEY_PAIR_SPECS)
def test_every_data_key_pair_matches_its_public_key(server, spec):
    kms = kms_client()
    symmetric = new_key("key pairs")
    context = {"purpose": "compat", "spec": spec}
    pair = _skip_unsupported(
        lambda: kms.generate_data_key_pair(
            KeyId=symmetric["KeyId"], KeyPairSpec=spec, EncryptionContext=context
        ),
        f"GenerateDataKeyPair {spec}",
    )

    def check(pkcs8, spki):
        private = serialization.load_der_private_key(pkcs8, password=None)
        assert (
            private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == spki
        )
        if spec not in CURVES:
            # Unencrypted PKCS #8 DER, canonical (EC keys may or may not embed their public
            # key, so their bytes are not compared).
            assert (
                private.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                == pkcs8
            )
        if spec.startswith("RSA_"):
            assert private.key_size == int(spec[4:])
        elif spec in CURVES:
            assert isinstance(private.curve, CURVES[spec])

    assert pair["KeyPairSpec"] == spec
    assert pair["KeyId"] == symmetric["Arn"]
    check(pair["PrivateKeyPlaintext"], pair["PublicKey"])
    opened = kms.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"], EncryptionContext=context)
    assert opened["Plaintext"] == pair["PrivateKeyPlaintext"]
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"])
    if spec == "RSA_4096":
        return  # one 4096-bit key is enough
    # Half of all P-521 private scalars have a leading zero byte, which RFC 5915 keeps (the
    # octet string is as long as the order): eight pairs catch an encoder that drops it
    # 255 times in 256. One pair of the other specs.
    rounds = 8 if spec == "ECC_NIST_P521" else 1
    seen = {pair["PublicKey"]}
    for n in range(rounds):
        if n:
            pair = kms.generate_data_key_pair(
                KeyId=symmetric["KeyId"], KeyPairSpec=spec, EncryptionContext=context
            )
            check(pair["PrivateKeyPlaintext"], pair["PublicKey"])
        bare = kms.generate_data_key_pair_without_plaintext(
            KeyId=symmetric["KeyId"], KeyPairSpec=spec, EncryptionContext=context
        )
        assert "PrivateKeyPlaintext" not in bare
        assert bare["KeyPairSpec"] == spec
        assert bare["PublicKey"] not in seen
        seen |= {pair["PublicKey"], bare["PublicKey"]}
        opened = kms.decrypt(
            CiphertextBlob=bare["PrivateKeyCiphertextBlob"], EncryptionContext=context
        )
        check(opened["Plaintext"], bare["PublicKey"])


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"])
def test_ecdh_shared_secret_equals_cryptographys(server, spec):
    kms = kms_client()
    key = new_asymmetric_key(spec, "KEY_AGREEMENT")
    assert key["KeyAgreementAlgorithms"] == ["ECDH"]
    out, server_public = public_key_of(key["KeyId"])
    assert out["KeyAgreementAlgorithms"] == ["ECDH"]
    mine = ec.generate_private_key(CURVES[spec]())
    derived = kms.derive_shared_secret(
        KeyId=key["KeyId"],
        KeyAgreementAlgorithm="ECDH",
        PublicKey=mine.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    assert derived["KeyId"] == key["Arn"]
    assert derived["KeyAgreementAlgorithm"] == "ECDH"
    assert derived["SharedSecret"] == mine.exchange(ec.ECDH(), server_public)


@pytest.mark.parametrize("spec", ["HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512"])
def test_boto3_hmac_round_trip(server, spec):
    kms = kms_client()
    key = new_asymmetric_key(spec, "GENERATE_VERIFY_MAC")
    alg = "HMAC_SHA_" + spec[5:]
    assert key["MacAlgorithms"] == [alg]
    mac = kms.generate_mac(KeyId=key["KeyId"], Message=MESSAGE, MacAlgorithm=alg)
    assert mac["MacAlgorithm"] == alg and mac["KeyId"] == key["Arn"]
    assert len(mac["Mac"]) == int(spec[5:]) // 8
    ok = kms.verify_mac(KeyId=key["KeyId"], Message=MESSAGE, MacAlgorithm=alg, Mac=mac["Mac"])
    assert ok["MacValid"] is True
    with pytest.raises(kms.exceptions.KMSInvalidMacException):
        kms.verify_mac(KeyId=key["KeyId"], Message=MESSAGE + b"!", MacAlgorithm=alg, Mac=mac["Mac"])
    with pytest.raises(kms.exceptions.InvalidKeyUsageException):
        kms.sign(KeyId=key["KeyId"], Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256")


def test_aws_cli_sign_verify_and_get_public_key(server, tmp_path):
    key = new_asymmetric_key("ECC_NIST_P256", "SIGN_VERIFY")
    message = tmp_path / "message.bin"
    message.write_bytes(MESSAGE)
    common = ["--key-id", key["KeyId"], "--signing-algorithm", "ECDSA_SHA_256"]
    r = _aws("kms", "sign", *common, "--message", f"fileb://{message}", "--message-type", "RAW")
    out = json.loads(r.stdout)
    assert out["KeyId"] == key["Arn"]
    assert out["SigningAlgorithm"] == "ECDSA_SHA_256"
    signature = tmp_path / "signature.bin"
    signature.write_bytes(base64.b64decode(out["Signature"]))

    def verify(msg):
        return _aws(
            "kms",
            "verify",
            *common,
            "--message",
            f"fileb://{msg}",
            "--message-type",
            "RAW",
            "--signature",
            f"fileb://{signature}",
            check=False,
        )

    r = verify(message)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["SignatureValid"] is True
    changed = tmp_path / "changed.bin"
    changed.write_bytes(MESSAGE + b"!")
    r = verify(changed)
    assert r.returncode != 0
    assert "KMSInvalidSignatureException" in r.stderr, r.stderr

    r = _aws("kms", "get-public-key", "--key-id", key["KeyId"])
    out = json.loads(r.stdout)
    assert out["KeySpec"] == "ECC_NIST_P256" and out["KeyUsage"] == "SIGN_VERIFY"
    assert out["SigningAlgorithms"] == ["ECDSA_SHA_256"]
    public = serialization.load_der_public_key(base64.b64decode(out["PublicKey"]))
    # What the CLI signed verifies with what the CLI fetched, in `cryptography`.
    public.verify(signature.read_bytes(), MESSAGE, ec.ECDSA(hashes.SHA256()))


def _start_ci_server(tmp_path, listen="127.0.0.1:0"):
    """`p11kms serve --ci` on a fresh embedded token; returns (proc, endpoint, exports)."""
    state = tmp_path / "ci-state"
    env = _clean_env({"P11KMS_STATE_DIR": str(state), "P11KMS_ACCOUNT": "000000000000"})
    subprocess.run([BIN, "token", "init"], env=env, check=True, capture_output=True, timeout=120)
    log = open(tmp_path / "ci-server.log", "wb")
    proc = subprocess.Popen(
        [BIN, "serve", "--ci", "--listen", listen],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    exports = {}
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            exports[name] = shlex.split(value)[0]
        elif line.startswith("listening on "):
            return proc, exports["AWS_ENDPOINT_URL"], exports
    proc.wait(timeout=30)
    return proc, None, (tmp_path / "ci-server.log").read_text(errors="replace")


def test_ci_mode_boto3_with_dummy_credentials_in_three_regions(tmp_path):
    proc, endpoint, exports = _start_ci_server(tmp_path)
    try:
        assert endpoint, exports
        assert exports["AWS_ACCESS_KEY_ID"] == "test"
        log = (tmp_path / "ci-server.log").read_text(errors="replace")
        assert "CI MODE" in log, log
        for region in ["us-east-1", "eu-west-1", "ap-northeast-1"]:
            # As a moto/LocalStack test suite configures its clients.
            kms = boto3.client(
                "kms",
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id="test",
                aws_secret_access_key="test",
            )
            key = kms.create_key(Description=f"ci {region}")["KeyMetadata"]
            assert key["Arn"].startswith(f"arn:aws:kms:{region}:000000000000:key/")
            kms.create_alias(AliasName="alias/ci-app", TargetKeyId=key["KeyId"])
            blob = kms.encrypt(KeyId="alias/ci-app", Plaintext=b"moto-style")["CiphertextBlob"]
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"moto-style"
            ids = [k["KeyId"] for k in kms.list_keys()["Keys"]]
            assert ids == [key["KeyId"]], "each region lists its own keys"
    finally:
        proc.terminate()
        proc.wait(timeout=40)


MOTO_SUITE = Path(__file__).resolve().parent / "moto_suite"


def _free_loopback_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_suite(endpoint, files):
    """The application's pytest run, with nothing but AWS_ENDPOINT_URL pointing at `endpoint`."""
    env = _clean_env({"AWS_ENDPOINT_URL": endpoint})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(MOTO_SUITE), *[str(MOTO_SUITE / f) for f in files]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_moto_suite_runs_unchanged(tmp_path):
    """Issue 12's "done when": a suite written for moto passes against `serve --ci` with only
    AWS_ENDPOINT_URL changed. It must pass on a real moto_server first (proof that it is a
    moto suite); then it runs against p11kms, with the stricter tests moto fails."""
    port = _free_loopback_port()
    moto_log = open(tmp_path / "moto.log", "wb")
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=_clean_env({}),
        stdout=moto_log,
        stderr=subprocess.STDOUT,
    )
    try:
        import socket
        import time

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert moto.poll() is None, (tmp_path / "moto.log").read_text(errors="replace")
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        on_moto = _run_suite(f"http://127.0.0.1:{port}", ["test_vault.py"])
        assert on_moto.returncode == 0, on_moto.stdout + on_moto.stderr
    finally:
        moto.terminate()
        moto.wait(timeout=30)

    proc, endpoint, exports = _start_ci_server(tmp_path)
    try:
        assert endpoint, exports
        on_p11kms = _run_suite(endpoint, ["test_vault.py", "test_strict.py"])
        assert on_p11kms.returncode == 0, on_p11kms.stdout + on_p11kms.stderr
        assert " passed" in on_p11kms.stdout and "skipped" not in on_p11kms.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=40)


def test_boto3_multi_region_key_across_regions(tmp_path):
    """A multi-Region key made, replicated and moved with boto3 clients of two regions."""
    proc, endpoint, exports = _start_ci_server(tmp_path)
    try:
        assert endpoint, exports

        def client(region):
            return boto3.client(
                "kms",
                region_name=region,
                endpoint_url=endpoint,
                aws_access_key_id="test",
                aws_secret_access_key="test",
            )

        east, west = client("us-east-1"), client("eu-west-1")
        key = east.create_key(MultiRegion=True, Description="east")["KeyMetadata"]
        kid = key["KeyId"]
        assert kid.startswith("mrk-") and key["MultiRegion"] is True
        assert key["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY"
        r = east.replicate_key(KeyId=kid, ReplicaRegion="eu-west-1", Description="west")
        assert r["ReplicaKeyMetadata"]["Arn"] == f"arn:aws:kms:eu-west-1:000000000000:key/{kid}"
        assert r["ReplicaKeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
        with pytest.raises(ClientError) as e:
            east.replicate_key(KeyId=kid, ReplicaRegion="eu-west-1")
        assert e.value.response["Error"]["Code"] == "AlreadyExistsException"
        blob = east.encrypt(KeyId=kid, Plaintext=b"across")["CiphertextBlob"]
        out = west.decrypt(CiphertextBlob=blob)
        assert out["Plaintext"] == b"across"
        assert out["KeyId"] == f"arn:aws:kms:eu-west-1:000000000000:key/{kid}"
        east.update_primary_region(KeyId=kid, PrimaryRegion="eu-west-1")
        d = east.describe_key(KeyId=kid)["KeyMetadata"]
        assert d["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
        assert d["MultiRegionConfiguration"]["PrimaryKey"]["Region"] == "eu-west-1"
        assert d["Description"] == "east"
        assert west.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "west"
        assert east.decrypt(CiphertextBlob=blob)["Plaintext"] == b"across"
    finally:
        proc.terminate()
        proc.wait(timeout=40)


def test_ci_mode_refuses_a_non_loopback_address(tmp_path):
    proc, endpoint, log = _start_ci_server(tmp_path, listen="0.0.0.0:0")
    assert endpoint is None
    assert proc.returncode != 0
    assert "loopback" in log, log


def _openssl(*args):
    return subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize(
    "algorithm",
    ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"],
)
def test_aws_cli_and_openssl_import_key_material(server, tmp_path, algorithm):
    """The documented user flow: get-parameters-for-import, the material wrapped with
    `openssl pkeyutl` (and `openssl enc -id-aes256-wrap-pad` for RSA_AES_KEY_WRAP),
    import-key-material, then boto3 uses the key."""
    assert shutil.which("openssl"), "openssl is needed for the documented import flow"
    kms = kms_client()
    key = kms.create_key(Origin="EXTERNAL", Description=f"compat import {algorithm}")["KeyMetadata"]
    assert key["Origin"] == "EXTERNAL" and key["KeyState"] == "PendingImport"
    r = _aws(
        "kms",
        "get-parameters-for-import",
        "--key-id",
        key["KeyId"],
        "--wrapping-algorithm",
        algorithm,
        "--wrapping-key-spec",
        "RSA_2048",
        check=False,
    )
    if r.returncode != 0 and "UnsupportedOperationException" in r.stderr:
        assert "CKM_" in r.stderr, r.stderr
        pytest.skip(f"{TOKEN} token: {algorithm}: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    params = json.loads(r.stdout)
    public = tmp_path / "WrappingPublicKey.bin"
    public.write_bytes(base64.b64decode(params["PublicKey"]))
    token = tmp_path / "ImportToken.bin"
    token.write_bytes(base64.b64decode(params["ImportToken"]))
    material = tmp_path / "PlaintextKeyMaterial.bin"
    _openssl("rand", "-out", str(material), "32")
    md = "sha256" if algorithm.endswith("SHA_256") else "sha1"
    oaep = [
        "-keyform", "DER", "-pubin", "-inkey", str(public),
        "-pkeyopt", "rsa_padding_mode:oaep",
        "-pkeyopt", f"rsa_oaep_md:{md}",
        "-pkeyopt", f"rsa_mgf1_md:{md}",
    ]
    encrypted = tmp_path / "EncryptedKeyMaterial.bin"
    if algorithm.startswith("RSAES_OAEP"):
        _openssl("pkeyutl", "-encrypt", "-in", str(material), "-out", str(encrypted), *oaep)
    else:
        aes = tmp_path / "aes-key.bin"
        _openssl("rand", "-out", str(aes), "32")
        wrapped_material = tmp_path / "key-material-wrapped.bin"
        _openssl(
            "enc", "-id-aes256-wrap-pad", "-K", aes.read_bytes().hex(), "-iv", "A65959A6",
            "-in", str(material), "-out", str(wrapped_material),
        )
        wrapped_aes = tmp_path / "aes-key-wrapped.bin"
        _openssl("pkeyutl", "-encrypt", "-in", str(aes), "-out", str(wrapped_aes), *oaep)
        encrypted.write_bytes(wrapped_aes.read_bytes() + wrapped_material.read_bytes())
    import_args = [
        "kms", "import-key-material",
        "--key-id", key["KeyId"],
        "--encrypted-key-material", f"fileb://{encrypted}",
        "--import-token", f"fileb://{token}",
        "--expiration-model", "KEY_MATERIAL_DOES_NOT_EXPIRE",
    ]
    r = _aws(*import_args, check=False)
    assert r.returncode == 0, r.stderr
    described = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
    assert described["KeyState"] == "Enabled", described
    assert described["Origin"] == "EXTERNAL"
    assert described["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    enc = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"imported with openssl")
    assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])["Plaintext"] == b"imported with openssl"

    # Delete, and only the same material brings the key back.
    _aws("kms", "delete-imported-key-material", "--key-id", key["KeyId"])
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(kms.exceptions.KMSInvalidStateException):
        kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])
    r = _aws(*import_args, check=False)
    assert r.returncode == 0, r.stderr
    assert kms.decrypt(CiphertextBlob=enc["CiphertextBlob"])["Plaintext"] == b"imported with openssl"
    # A tampered blob is refused as AWS refuses it.
    bad = tmp_path / "tampered.bin"
    data = bytearray(encrypted.read_bytes())
    data[10] ^= 1
    bad.write_bytes(bytes(data))
    import_args[5] = f"fileb://{bad}"
    r = _aws(*import_args, check=False)
    assert r.returncode != 0
    assert "InvalidCiphertextException" in r.stderr, r.stderr


def test_boto3_key_rotation(server):
    """The rotation calls through boto3, against a server whose upkeep completes the rotation."""
    import time

    kms = kms_client()
    key = new_key("rotation")
    first = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"]
    assert len(first) == 64
    old = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"before")["CiphertextBlob"]
    status = kms.get_key_rotation_status(KeyId=key["KeyId"])
    assert status["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key["KeyId"], RotationPeriodInDays=180)
    status = kms.get_key_rotation_status(KeyId=key["Arn"])
    assert status["KeyRotationEnabled"] is True
    assert status["RotationPeriodInDays"] == 180
    assert status["NextRotationDate"].year >= 2024
    assert kms.rotate_key_on_demand(KeyId=key["KeyId"])["KeyId"] == key["Arn"]
    with pytest.raises(kms.exceptions.ConflictException):
        kms.rotate_key_on_demand(KeyId=key["KeyId"])
    deadline = time.time() + 30
    while "OnDemandRotationStartDate" in kms.get_key_rotation_status(KeyId=key["KeyId"]):
        assert time.time() < deadline, "the server's upkeep never completed the rotation"
        time.sleep(0.5)
    second = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"]
    assert second != first
    rotations = kms.list_key_rotations(KeyId=key["KeyId"])["Rotations"]
    assert [(r["KeyMaterialId"], r["RotationType"], r["KeyMaterialState"]) for r in rotations] == [
        (second, "ON_DEMAND", "CURRENT")
    ]
    assert rotations[0]["RotationDate"].year >= 2024
    every = kms.list_key_rotations(KeyId=key["KeyId"], IncludeKeyMaterial="ALL_KEY_MATERIAL")
    assert [r["KeyMaterialId"] for r in every["Rotations"]] == [first, second]
    out = kms.decrypt(CiphertextBlob=old)
    assert out["Plaintext"] == b"before"
    assert out["KeyMaterialId"] == first
    dk = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")
    assert dk["KeyMaterialId"] == second
    kms.disable_key_rotation(KeyId=key["KeyId"])
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is False
