"""Remote runs fail fast and clearly: a bad address, a refused connection, a server that never answers."""

import socket
import threading
import time

import pytest

from compiler.errors import IntformerError
from targets.remote import RemoteSpec, call_with_timeout, connect, parse_address


def test_parse_address():
    assert parse_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    for bad in ("nope", "host:", ":9090", "h:99999", "h:x"):
        with pytest.raises(IntformerError, match="HOST:PORT"):
            parse_address(bad)


def test_spec_needs_one_way():
    with pytest.raises(IntformerError, match="--rpc"):
        RemoteSpec()
    with pytest.raises(IntformerError, match="--key"):
        RemoteSpec(tracker="127.0.0.1:9190")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_is_clear():
    with pytest.raises(IntformerError, match="nothing answers there"):
        connect(RemoteSpec(rpc=f"127.0.0.1:{_free_port()}", timeout=20))


def test_silent_server_times_out():
    """A server that accepts and never answers (what a crashed board session looks like) is an error
    within the time-out, not a hang."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(srv.accept()), daemon=True).start()
    t0 = time.time()
    with pytest.raises(IntformerError, match="no answer within 2 s"):
        connect(RemoteSpec(rpc=f"127.0.0.1:{srv.getsockname()[1]}", timeout=2))
    assert time.time() - t0 < 10
    srv.close()


def test_call_with_timeout_passes_values_and_errors():
    assert call_with_timeout(lambda: 7, 5, "adding", "here") == 7
    with pytest.raises(IntformerError, match="here: dividing failed: ZeroDivisionError|division by zero"):
        call_with_timeout(lambda: 1 / 0, 5, "dividing", "here")


def test_cli_run_refused(tiny_bert_lib, tmp_path):
    from tests.test_cli import assert_clean_error, intformer

    lib, _, _, test_npz = tiny_bert_lib
    assert_clean_error(intformer("run", lib, "--inputs", test_npz, "-o", str(tmp_path / "o.npz"),
                                 "--rpc", f"127.0.0.1:{_free_port()}", "--timeout", "20"), "nothing answers there")
    assert_clean_error(intformer("bench", lib, "--tracker", "127.0.0.1:1"), "--key")
