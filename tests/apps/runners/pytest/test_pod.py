# Run by `remora test -- pytest-3`: the test sees the pod's env and files.
import os


def test_sees_the_pods_env():
    assert os.environ.get("APP_SECRET") == "s3cr3t-from-the-pod"


def test_reads_a_pod_file():
    with open("/etc/checkout/config.yaml") as f:
        assert f.readline() == "feature_flags:\n"
