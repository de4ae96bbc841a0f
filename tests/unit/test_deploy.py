"""Deployment preparation: certificates, SuperNode keys, data files, node configs, CLI."""

import ipaddress
import stat
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Context, RecordDict
from flwr.cli.supernode.register import try_load_public_key

from deploy.__main__ import main
from deploy.federation import Federation
from deploy.files import DeployError, write_new_file
from deploy.node_data import write_demo_partitions
from deploy.node_keys import ensure_node_key
from deploy.nodes import default_names, prepare_supernodes
from deploy.processes import ManagedProcess, ProcessError
from deploy.tls import TlsFiles, certificate_hosts, ensure_tls
from fl_app.client_app import client_setup
from fl_app.config import RunConfig
from fl_app.data import embedded_client_data, embedded_shape

DIGITS = embedded_shape("digits")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_write_new_file_never_replaces_a_file(tmp_path):
    path = tmp_path / "sub" / "secret.key"
    write_new_file(path, b"first", mode=0o600)
    with pytest.raises(DeployError, match="never overwritten"):
        write_new_file(path, b"second")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_tls_ca_signs_a_superlink_certificate_for_local_and_named_hosts(tmp_path):
    files = ensure_tls(tmp_path, ["superlink.example.org", "10.1.2.3"])
    assert files == TlsFiles.under(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    cert = x509.load_pem_x509_certificate(files.superlink_certificate.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert certificate_hosts(cert) == {
        "127.0.0.1",
        "localhost",
        "superlink.example.org",
        "10.1.2.3",
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in ips.get_values_for_type(x509.IPAddress)
    key = serialization.load_pem_private_key(files.superlink_key.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    for private in (files.ca_key, files.superlink_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_tls_files_are_reused_and_never_overwritten(tmp_path):
    ensure_tls(tmp_path, ["node.example.org"])
    before = snapshot(tmp_path)
    ensure_tls(tmp_path)  # a subset of the hosts: reused as they are
    ensure_tls(tmp_path, ["node.example.org"])
    assert snapshot(tmp_path) == before
    with pytest.raises(DeployError, match=r"not for other\.example\.org.*never overwritten"):
        ensure_tls(tmp_path, ["other.example.org"])
    assert snapshot(tmp_path) == before


def test_a_new_superlink_certificate_reuses_the_existing_ca(tmp_path):
    files = ensure_tls(tmp_path)
    ca_before = files.ca_certificate.read_bytes()
    files.superlink_certificate.unlink()
    files.superlink_key.unlink()
    ensure_tls(tmp_path, ["new-host.example.org"])
    assert files.ca_certificate.read_bytes() == ca_before
    cert = x509.load_pem_x509_certificate(files.superlink_certificate.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))


def test_tls_refuses_incomplete_sets_and_bad_hosts(tmp_path):
    files = ensure_tls(tmp_path)
    files.superlink_key.unlink()
    with pytest.raises(DeployError, match=r"superlink\.crt but not .*superlink\.key"):
        ensure_tls(tmp_path)
    with pytest.raises(DeployError, match="'https://x:9' is neither an IP address nor a DNS"):
        ensure_tls(tmp_path / "other", ["https://x:9"])
    assert not (tmp_path / "other").exists()


def test_node_keys_have_the_format_flower_reads(tmp_path):
    key = ensure_node_key(tmp_path, "node-0")
    assert key.private_key == tmp_path / "nodes" / "node-0" / "auth.key"
    assert key.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert len(try_load_public_key(key.public_key)) > 0  # what `flwr supernode register` does
    private = serialization.load_ssh_private_key(key.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # what flower-supernode does
    assert private.curve.name == "secp384r1"
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600
    before = snapshot(tmp_path)
    assert ensure_node_key(tmp_path, "node-0") == key
    assert snapshot(tmp_path) == before
    assert ensure_node_key(tmp_path, "node-1").public_key.read_bytes() != (
        key.public_key.read_bytes()
    )


def test_node_keys_that_do_not_match_are_refused(tmp_path):
    first = ensure_node_key(tmp_path, "a")
    second = ensure_node_key(tmp_path, "b")
    first.public_key.write_bytes(second.public_key.read_bytes())
    with pytest.raises(DeployError, match="is not the EC public key of"):
        ensure_node_key(tmp_path, "a")
    with pytest.raises(DeployError, match=r"node name '\.\./x' is invalid"):
        ensure_node_key(tmp_path, "../x")


def test_demo_partition_file_gives_the_node_exactly_its_simulated_data(tmp_path):
    config = RunConfig(partitioner="dirichlet", seed=7)
    paths = write_demo_partitions(tmp_path, ["node-0", "node-1", "node-2"], config)
    for partition_id, path in enumerate(paths):
        node_config = {"data-path": str(path), "partition-id": partition_id, "num-partitions": 3}
        deployed = client_setup(
            Context(1, 1, node_config, RecordDict(), config.to_dict()), DIGITS
        ).data
        simulated = embedded_client_data(
            config.dataset,
            config.test_fraction,
            config.val_fraction,
            config.partitioner,
            3,
            partition_id,
            config.seed,
            config.dirichlet_alpha,
            config.labels_per_client,
        )
        for part in ("train", "val"):
            assert np.array_equal(getattr(deployed, part).x, getattr(simulated, part).x)
            assert np.array_equal(getattr(deployed, part).y, getattr(simulated, part).y)


def test_demo_partition_files_are_reused_but_never_replaced(tmp_path):
    names = ["node-0", "node-1"]
    paths = write_demo_partitions(tmp_path, names, RunConfig())
    before = snapshot(tmp_path)
    assert write_demo_partitions(tmp_path, names, RunConfig()) == paths
    assert snapshot(tmp_path) == before
    with pytest.raises(DeployError, match=r"node-0/data.npz exists and holds other data"):
        write_demo_partitions(tmp_path, names, RunConfig(seed=1))
    assert snapshot(tmp_path) == before


def test_prepare_supernodes_builds_each_node_config(tmp_path):
    specs = prepare_supernodes(
        tmp_path,
        default_names(2),
        RunConfig(),
        extra_node_config={"state-dir": "/ledgers/{node}", "he-secret-context": "/k/he.ctx"},
    )
    assert [s.name for s in specs] == ["node-0", "node-1"]
    assert specs[1].node_config == {
        "partition-id": 1,
        "num-partitions": 2,
        "data-path": str(tmp_path / "nodes" / "node-1" / "data.npz"),
        "state-dir": "/ledgers/node-1",
        "he-secret-context": "/k/he.ctx",
    }
    assert specs[0].auth_public_key.is_file() and specs[0].auth_private_key.is_file()


def test_prepare_supernodes_with_the_users_own_files(tmp_path):
    own = {name: tmp_path / f"{name}.csv" for name in ("a", "b")}
    for path in own.values():
        path.write_text("label,f0\n0,1.0\n")
    specs = prepare_supernodes(tmp_path / "d", ["a", "b"], RunConfig(), own)
    assert [s.node_config["data-path"] for s in specs] == [str(own["a"]), str(own["b"])]
    assert not list((tmp_path / "d").rglob("data.npz"))
    with pytest.raises(DeployError, match="give every node its own data file or none"):
        prepare_supernodes(tmp_path / "d", ["a", "b"], RunConfig(), {"a": own["a"]})
    with pytest.raises(DeployError, match=r"unknown node\(s\) \['c'\]"):
        prepare_supernodes(tmp_path / "d", ["a", "b"], RunConfig(), {**own, "c": own["a"]})
    with pytest.raises(DeployError, match="data file of node b does not exist"):
        prepare_supernodes(tmp_path / "d", ["a", "b"], RunConfig(), {**own, "b": tmp_path / "x"})
    with pytest.raises(DeployError, match="'data-path' is set by the deployment"):
        prepare_supernodes(tmp_path / "d", ["a", "b"], RunConfig(), own, {"data-path": "x"})


def test_cli_prepare_prints_which_file_goes_where(tmp_path, capsys):
    code = main(["prepare", str(tmp_path), "--nodes", "3", "--host", "fl.example.org"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"every machine:        {tmp_path}/ca/ca.crt" in out
    assert "operator only" in out and "node-2: private key" in out
    assert len(list(tmp_path.rglob("auth.key"))) == 3


def test_cli_rejects_a_bad_run_config_before_creating_anything(tmp_path, capsys):
    code = main(["prepare", str(tmp_path), "--run-config", "partitioner='random' seed=1"])
    assert code == 1
    assert "'partitioner' = 'random' is invalid" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_cli_prepare_checks_every_data_file_before_writing_keys(tmp_path, capsys):
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x=np.zeros((8, 28, 28), np.uint8), y=np.arange(8))
    np.savez(bad, x=np.zeros((8, 17)), y=np.arange(8))
    directory = tmp_path / "deployment"
    run_config = "dataset='files' input-shape='28,28' num-classes=10"
    args = ["prepare", str(directory), "--run-config", run_config, "--data", f"node-0={good}"]
    code = main([*args, "--data", f"node-1={bad}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert f"node node-1: {bad}: samples have shape 17 (17 values)" in err
    assert "the task expects 1,28,28 (784 values)" in err and "node-0" not in err.split(":")[1]
    assert not directory.exists()
    assert main([*args, "--data", f"node-1={good}"]) == 0
    assert main(["prepare", str(tmp_path / "d2"), "--run-config", run_config]) == 1
    assert "dataset 'files' has no demo data" in capsys.readouterr().err


def test_stop_ends_the_process_and_children_in_other_sessions_in_bounded_time(tmp_path):
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a command that ignores SIGTERM
        "child = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    process = ManagedProcess(
        "stubborn", [sys.executable, "-c", script], {}, tmp_path, tmp_path / "log.txt"
    )
    process.start()
    process.wait_until(lambda: process.log_text().strip() != "", 30, "printing its child")
    child = psutil.Process(int(process.log_text().split()[0]))
    started = time.monotonic()
    process.stop(timeout=1.0)
    assert time.monotonic() - started < 5
    assert process.returncode() is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_wait_until_reports_an_early_exit_with_the_log(tmp_path):
    process = ManagedProcess(
        "failing", ["sh", "-c", "echo bad key; exit 3"], {}, tmp_path, tmp_path / "log.txt"
    )
    process.start()
    with pytest.raises(ProcessError, match=r"(?s)failing exited with code 3 before ready.*bad key"):
        process.wait_until(lambda: False, 30, "ready")
    process.stop()


def test_federation_refuses_to_bind_a_host_its_certificate_does_not_cover(tmp_path):
    tls = ensure_tls(tmp_path, ["fl.example.org"])
    Federation(tmp_path, tls, host="0.0.0.0")  # reached at 127.0.0.1: covered
    Federation(tmp_path, tls, host="fl.example.org")
    with pytest.raises(DeployError, match=r"not valid for '10\.0\.0\.7'.*--host"):
        Federation(tmp_path, tls, host="10.0.0.7")


def test_cli_run_stops_before_starting_anything_when_the_bind_host_is_not_certified(
    tmp_path, capsys
):
    code = main(["run", str(tmp_path), "--nodes", "2", "--bind", "10.0.0.7"])
    assert code == 1
    assert "is not valid for '10.0.0.7'" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_a_deployed_run_with_he_and_no_keys_is_refused_before_anything_starts(tmp_path, capsys):
    code = main(["run", str(tmp_path / "d"), "--nodes", "2", "--run-config", "he=true"])
    assert code == 1
    error = capsys.readouterr().err
    assert "he = true needs the HE keys before anything starts" in error
    assert "node-0's secret context" in error and "node-1's secret context" in error
    assert "fl-he keygen --secret-context" in error
    assert not (tmp_path / "d" / "logs").exists()  # no SuperLink, no SuperNode was started
