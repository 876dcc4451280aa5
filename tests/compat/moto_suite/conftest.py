"""Fixtures as in moto's documentation: fake credentials, a default region, clients from boto3.

The endpoint comes from AWS_ENDPOINT_URL alone (boto3 reads it), so the same suite runs
against moto_server or any other KMS endpoint.
"""

import os
import uuid

import boto3
import pytest


@pytest.fixture(scope="session", autouse=True)
def aws_credentials():
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_SECURITY_TOKEN"] = "testing"
    os.environ["AWS_SESSION_TOKEN"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    assert os.environ.get("AWS_ENDPOINT_URL"), "point AWS_ENDPOINT_URL at the emulator"


@pytest.fixture
def kms(aws_credentials):
    return boto3.client("kms", region_name="us-east-1")


@pytest.fixture
def kms_eu(aws_credentials):
    return boto3.client("kms", region_name="eu-west-1")


@pytest.fixture
def unique():
    """A fresh name per test: the emulator is shared by the whole run and never reset."""
    return uuid.uuid4().hex[:12]
