"""``omnifm-he-context`` writes FLARE-compatible TenSEAL contexts and never overwrites keys silently."""

from __future__ import annotations

import numpy as np
import pytest

ts = pytest.importorskip("tenseal")

from omnifm.fl import he  # noqa: E402
from omnifm.tools.he_context import main  # noqa: E402

pytestmark = pytest.mark.he


def test_writes_server_and_client_contexts_that_work_together(tmp_path, capsys):
    assert main([str(tmp_path / "startup")]) == 0
    assert "wrote" in capsys.readouterr().out
    server = ts.context_from((tmp_path / "startup" / he.SERVER_CONTEXT).read_bytes())
    client = ts.context_from((tmp_path / "startup" / he.CLIENT_CONTEXT).read_bytes())
    assert client.has_secret_key() and not server.has_secret_key()
    values = np.linspace(-1, 1, 50)
    on_server = ts.ckks_vector_from(server, ts.ckks_vector(client, values).serialize())
    doubled = ts.ckks_vector_from(client, (on_server + on_server).serialize())
    assert np.abs(np.array(doubled.decrypt()) - 2 * values).max() < 1e-4


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    before = (tmp_path / he.CLIENT_CONTEXT).read_bytes()
    assert main([str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / he.CLIENT_CONTEXT).read_bytes() == before, "keys must not change without --force"
    assert main([str(tmp_path), "--force"]) == 0
    assert (tmp_path / he.CLIENT_CONTEXT).read_bytes() != before


@pytest.mark.parametrize("args, message", [(["--poly-modulus-degree", "1000"], "poly_modulus_degree")])
def test_bad_parameters_are_named(tmp_path, capsys, args, message):
    assert main([str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / he.SERVER_CONTEXT).exists()
