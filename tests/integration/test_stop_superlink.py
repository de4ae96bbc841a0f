"""``scripts/stop-superlink.sh`` stops the SuperLink on its port, and no other."""

from tools.local_superlink import LocalSuperLink
from tools.stop_superlink import main as stop_superlink


def test_stops_the_superlink_listening_on_its_port_and_no_other(tmp_path, capsys):
    with (
        LocalSuperLink(tmp_path / "a", cwd=tmp_path) as target,
        LocalSuperLink(tmp_path / "b", cwd=tmp_path) as bystander,
    ):
        assert stop_superlink(["--port", str(target.port)]) == 0
        assert f"stopped flower-superlink PID {target.process.pid}" in capsys.readouterr().out
        assert target.processes() == []
        assert bystander.processes()
        assert stop_superlink(["--port", str(target.port)]) == 0
        assert "nothing to stop" in capsys.readouterr().out
